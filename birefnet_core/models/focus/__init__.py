"""FOCUS (universal foreground segmentation, AAAI 2025): configuration, network, edge input and
the mask-of-interest post-processing. ``birefnet_core.models.focus.checkpoint`` (loading
released checkpoints) lives beside these but is not imported here."""

from .config import FOCUS_CONFIGS, FocusConfig, config_from_state_dict
from .edges import OpenCVMissingError, edge_input
from .model import FOCUS, FocusFeatures, FocusOutputs, build_focus
from .postprocess import mask_of_interest

__all__ = [
    "FOCUS",
    "FOCUS_CONFIGS",
    "FocusConfig",
    "FocusFeatures",
    "FocusOutputs",
    "OpenCVMissingError",
    "build_focus",
    "config_from_state_dict",
    "edge_input",
    "mask_of_interest",
]
