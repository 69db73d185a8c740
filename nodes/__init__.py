"""ComfyUI node classes, one module per node family (loader, segment, matte, video).

Each module adds its classes to the two mappings below. ``nodes/comfy.py`` will be the only
module that imports ComfyUI, with a plain-PyTorch fallback so the classes also run outside it.
"""

from typing import Dict

NODE_CLASS_MAPPINGS: Dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {}
