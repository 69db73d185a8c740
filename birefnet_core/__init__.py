"""BiRefNet core: the network, its operators, inference, matting, video and training.

Self-contained (torch and the listed libraries); never imports ComfyUI or the pack's nodes.
"""

from .config import BACKBONES, BiRefNetConfig, PatchOrder
from .inference import Predictor, Resolution, auto_dtype
from .models import BiRefNet, build_model

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BiRefNet",
    "BiRefNetConfig",
    "PatchOrder",
    "Predictor",
    "Resolution",
    "auto_dtype",
    "build_model",
]
