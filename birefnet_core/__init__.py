"""BiRefNet core: the network, its operators, inference, matting, video and training.

Self-contained (torch and the listed libraries); never imports ComfyUI or the pack's nodes.
"""

from .checkpoint import detect_backbone, load_model, read_state_dict
from .config import BACKBONES, BiRefNetConfig, PatchOrder
from .hub import ModelAccessError, ModelNotAvailableError
from .inference import Predictor, Resolution, auto_dtype
from .models import BiRefNet, build_model
from .registry import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "VARIANTS",
    "BiRefNet",
    "BiRefNetConfig",
    "ModelAccessError",
    "ModelNotAvailableError",
    "PatchOrder",
    "Predictor",
    "Resolution",
    "Variant",
    "auto_dtype",
    "build_model",
    "detect_backbone",
    "get_variant",
    "load_model",
    "read_state_dict",
]
