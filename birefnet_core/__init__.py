"""BiRefNet core: the network, its operators, inference, matting, video and training.

Self-contained (torch and the listed libraries); never imports ComfyUI or the pack's nodes.
"""

__version__ = "0.1.0"
