"""ComfyUI node classes, one module per node family (loader, segment; matte and video follow).

``nodes/comfy.py`` is the only module that imports ComfyUI, with a plain-PyTorch fallback so the
classes also run outside it (tests, scripts).
"""

from typing import Dict

from .comfy import register_model_folder
from .loader import BiRefNetLoader
from .segment import BiRefNetSegment

register_model_folder()

NODE_CLASS_MAPPINGS: Dict[str, type] = {
    "BiRefNetLoader": BiRefNetLoader,
    "BiRefNetSegment": BiRefNetSegment,
}
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {
    "BiRefNetLoader": "Load BiRefNet Model",
    "BiRefNetSegment": "BiRefNet Segment",
}
