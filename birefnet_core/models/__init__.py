"""The networks: BiRefNet (backbones, decoder blocks, the assembled model) and FOCUS; which
families exist and how each is built is in :mod:`.families`."""

from .birefnet import BiRefNet, Decoder, TrainingOutputs, gradient_target, image_patches
from .families import FAMILIES, Family, build_model, family_of_model, get_family

__all__ = ["FAMILIES", "BiRefNet", "Decoder", "Family", "TrainingOutputs", "build_model", "family_of_model",
           "get_family", "gradient_target", "image_patches"]
