"""ComfyUI node classes, one module per node family (loader, segment, matte, video).

``nodes/comfy.py`` is the only module that imports ComfyUI, with a plain-PyTorch fallback so the
classes also run outside it (tests, scripts).
"""

from typing import Dict

from .comfy import register_model_folder
from .loader import BiRefNetLoader
from .matte import BiRefNetMatteRefine
from .segment import BiRefNetSegment
from .video import BiRefNetVideoMatte

register_model_folder()

NODE_CLASS_MAPPINGS: Dict[str, type] = {
    "BiRefNetLoader": BiRefNetLoader,
    "BiRefNetSegment": BiRefNetSegment,
    "BiRefNetMatteRefine": BiRefNetMatteRefine,
    "BiRefNetVideoMatte": BiRefNetVideoMatte,
}
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {
    "BiRefNetLoader": "Load BiRefNet Model",
    "BiRefNetSegment": "BiRefNet Segment",
    "BiRefNetMatteRefine": "BiRefNet Matte Refine",
    "BiRefNetVideoMatte": "BiRefNet Video Frames",
}
