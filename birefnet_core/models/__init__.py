"""The BiRefNet network: backbones, decoder blocks and the assembled model."""

from .birefnet import BiRefNet, Decoder, TrainingOutputs, build_model, gradient_target, image_patches

__all__ = ["BiRefNet", "Decoder", "TrainingOutputs", "build_model", "gradient_target", "image_patches"]
