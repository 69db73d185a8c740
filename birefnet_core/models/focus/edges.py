"""The input of FOCUS's edge branch: a Canny-edge-blended copy of the normalised padded image.

Byte-exact recipe of the official ``_inject_edges`` (``shared/notes/focus-reference.md`` section 2):

1. ``uint8(clamp(x * 255 + 0.5, 0, 255))`` of the *normalised* input, in float32 (truncation;
   most pixels saturate to 0 or 255);
2. RGB -> BGR;
3. ``cv2.GaussianBlur(5x5, sigma 1.4)`` (OpenCV's fixed-point uint8 kernel);
4. ``cv2.Canny(channel, 100, 200)`` on each blurred channel;
5. ``cv2.addWeighted(blurred, 0.7, edges, 0.3, 0)`` (uint8, saturating);
6. ``/ 255`` (official: in float64, then float32; the same bytes as float32 / 255): values in
   [0, 1], BGR, not mean/std-normalised.

Steps 3-5 call OpenCV (``opencv-python-headless``), imported only here and only when needed, so
BiRefNet never needs it. OpenCV works on one H x W x C array at a time: the batch is moved to
the CPU as uint8, processed image by image (whole-image calls, no per-pixel Python), and the
result is moved back to the input's device (a CPU round trip also when the model runs on a GPU).
"""

from __future__ import annotations

import numpy as np
import torch

INSTALL_HINT = "pip install opencv-python-headless"


class OpenCVMissingError(ImportError):
    """OpenCV is needed (FOCUS's edge branch) but not installed."""


def require_opencv():
    """The ``cv2`` module, or :class:`OpenCVMissingError` with the one-line install hint."""
    try:
        import cv2
    except ImportError as e:
        raise OpenCVMissingError(f"FOCUS's edge branch needs OpenCV, which is not installed: {INSTALL_HINT}") from e
    return cv2


def edge_input(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, Hp, Wp] normalised, zero-padded RGB image -> [B, 3, Hp, Wp] float32 edge-branch
    input in [0, 1], channels B, G, R, on ``x``'s device.

    ``x`` of any float dtype; it is read in float32, so the official bytes need ``x`` in float32
    (a half-precision ``x`` has already lost them)."""
    cv2 = require_opencv()
    u8 = (x.detach().to(torch.float32) * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # [B, 3, Hp, Wp]
    bgr = u8.flip(1).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # [B, Hp, Wp, 3]
    blended = np.empty_like(bgr)
    for image, out in zip(bgr, blended):  # one OpenCV call chain per image
        blurred = cv2.GaussianBlur(image, (5, 5), 1.4)
        edges = cv2.merge([cv2.Canny(channel, 100, 200) for channel in cv2.split(blurred)])
        out[...] = cv2.addWeighted(blurred, 0.7, edges, 0.3, 0)
    # uint8 back to the device; float32 / 255 equals the official float64 / 255 -> float32 for
    # every one of the 256 values (correctly rounded division), and works on every device
    return torch.from_numpy(blended).to(x.device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
