"""Video matting: frames streamed through the network in chunks, with temporal smoothing.

Memory: the caller's frames stay where they are (a CPU batch in ComfyUI); one chunk at a time is
moved to the device, and results are written into preallocated outputs, so the extra memory is
the outputs plus O(chunk), whatever the length of the video.

Temporal smoothing is a motion-gated exponential moving average of the probabilities: where the
image does not change, the new alpha moves towards the prediction by ``rate`` per frame (damping
frame-to-frame flicker); where the image changes (motion), the rate rises to 1 so moving edges
follow at once instead of leaving ghosts. It is causal, so its state after frame t is all that a
later window needs: a video fed in windows (VideoHelperSuite's Meta Batch Manager) gives exactly
the result of one run over all frames when the same :class:`TemporalSmoother` carries on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .inference import Predictor, as_images, to_unit_float
from .matting import Color, MatteOptions, over_color, parse_color, refine_matte

SMOOTHING_PRESETS = {"off": 0.0, "light": 0.4, "strong": 0.7}


def parse_strength(value: Union[str, float, int, None]) -> float:
    """"off"/"light"/"strong" or a number in 0..1 (0 = off, towards 1 = smoother)."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in SMOOTHING_PRESETS:
            return SMOOTHING_PRESETS[text]
        if not re.fullmatch(r"\d*\.?\d+", text):
            raise ValueError(f"smoothing must be off, light, strong or a number in 0..1, got {value!r}")
        value = float(text)
    strength = float(value)
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"smoothing strength must be in 0..1 (1 excluded), got {value!r}")
    return strength


@dataclass
class TemporalSmoother:
    """Motion-gated EMA over a sequence of probability maps, state carried between calls.

    ``strength`` s in 0..1: in still regions alpha_t = alpha_{t-1} + (1 - s) (p_t - alpha_{t-1});
    the rate rises linearly to 1 with the local image change (largest absolute difference of
    consecutive frames over the colour channels, box-blurred over ``motion_window`` px of a
    1/4-size image) reaching ``motion_full`` (in 0..1 intensity units). A frame whose mean change from the previous one
    exceeds ``cut_threshold`` starts afresh (a cut, a new video, or a window out of order), as does
    a change of frame size.
    """

    strength: float = 0.4
    motion_full: float = 0.05
    motion_window: int = 5
    cut_threshold: float = 0.08  # mean grey change that marks a new shot (or a new video): no blending

    def __post_init__(self) -> None:
        self.strength = parse_strength(self.strength)
        self.reset()

    def reset(self) -> None:
        self.previous_alpha: Optional[torch.Tensor] = None  # [H, W] float32
        self.previous_thumb: Optional[torch.Tensor] = None  # [3, H/4, W/4] float32
        self.frames_seen = 0

    @property
    def enabled(self) -> bool:
        return self.strength > 0

    def _thumbnail(self, frame: torch.Tensor) -> torch.Tensor:
        """[3, H, W] -> the quarter-size colour image [3, h, w] motion is measured on."""
        h, w = frame.shape[-2:]
        return F.interpolate(frame[None], size=(max(1, h // 4), max(1, w // 4)), mode="area")[0]

    def _rate(self, thumb: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        # the largest change over the colour channels: an edge between two colours of equal
        # brightness moves without changing the grey level
        change = (thumb - self.previous_thumb).abs().amax(0)[None, None]
        k = self.motion_window
        change = F.avg_pool2d(change, k, stride=1, padding=k // 2, count_include_pad=False)
        change = change[..., :thumb.shape[-2], :thumb.shape[-1]]
        motion = (change / self.motion_full).clamp(0.0, 1.0)
        base = 1.0 - self.strength
        rate = base + (1.0 - base) * motion
        return F.interpolate(rate, size=size, mode="bilinear", align_corners=False)[0, 0]

    def __call__(self, frames: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Smooth ``probs`` [n, H, W] of ``frames`` [n, 3, H, W] (0..1, same device), in order;
        returns float32 [n, H, W]. A change of frame size resets the state."""
        probs = probs.float()
        if not self.enabled:
            self.frames_seen += len(probs)
            return probs
        out = torch.empty_like(probs)
        for i in range(len(probs)):  # causal by nature: frame t needs the smoothed frame t-1
            thumb = self._thumbnail(frames[i].float())
            if self.previous_alpha is not None and (
                    self.previous_alpha.shape != probs[i].shape
                    or (thumb - self.previous_thumb.to(thumb.device)).mean(0).abs().mean() > self.cut_threshold):
                self.reset()
            if self.previous_alpha is None:
                out[i] = probs[i]
            else:
                previous = self.previous_alpha.to(probs.device)
                self.previous_thumb = self.previous_thumb.to(thumb.device)
                out[i] = torch.lerp(previous, probs[i], self._rate(thumb, probs.shape[-2:]))
            self.previous_alpha, self.previous_thumb = out[i].clone(), thumb
        self.frames_seen += len(probs)
        return out


@dataclass
class VideoOutputs:
    """Preallocated results, written chunk by chunk: ComfyUI layouts, float32, on the CPU."""

    mask: torch.Tensor  # [N, H, W]
    rgba: torch.Tensor  # [N, H, W, 4] straight alpha (estimated foreground colours if asked)
    composite: torch.Tensor  # [N, H, W, 3] over the background colour

    @classmethod
    def allocate(cls, n: int, h: int, w: int, device: Union[str, torch.device] = "cpu") -> "VideoOutputs":
        return cls(torch.empty(n, h, w, device=device), torch.empty(n, h, w, 4, device=device),
                   torch.empty(n, h, w, 3, device=device))


def matte_frames(
    predictor: Predictor,
    frames: torch.Tensor,
    *,
    smoother: Optional[TemporalSmoother] = None,
    matte: Optional[MatteOptions] = None,
    background_color: Color = "#ffffff",
    progress: Optional[Callable[[int, int], None]] = None,
    outputs: Optional[VideoOutputs] = None,
) -> VideoOutputs:
    """Mask, RGBA and composite for ``frames`` ([N, H, W, C] as ComfyUI's IMAGE and decoded video,
    C = 1, 3 or 4; float 0..1 or uint8), ``predictor.batch_size`` frames at a time on the
    predictor's device.

    ``smoother`` (state carried across calls) damps flicker; ``matte`` refines each chunk (mask
    operations, guided edges, foreground colours; see :class:`MatteOptions`) before compositing.
    ``progress(done, total)`` runs after every chunk and may raise to cancel: outputs written so
    far are complete frames, and the smoother's state is only advanced by completed chunks.
    """
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [N, H, W, C] with C = 1, 3 or 4, got {list(frames.shape)}")
    pixels = as_images(frames, "BHWC")
    n, _, h, w = pixels.shape
    parse_color(background_color)
    if outputs is None:
        outputs = VideoOutputs.allocate(n, h, w)
    device = predictor.device
    for start in range(0, n, predictor.batch_size):
        stop = min(n, start + predictor.batch_size)
        chunk = to_unit_float(pixels[start:stop].to(device))
        probs = predictor.predict(chunk, layout="BCHW")
        if smoother is not None:
            probs = smoother(chunk, probs)
        if matte is not None:
            chunk, probs = refine_matte(chunk, probs, matte)
        outputs.mask[start:stop] = probs.to(outputs.mask.device)
        outputs.rgba[start:stop, ..., :3] = chunk.movedim(1, -1).to(outputs.rgba.device)
        outputs.rgba[start:stop, ..., 3] = outputs.mask[start:stop]
        outputs.composite[start:stop] = over_color(chunk, probs, background_color).movedim(1, -1).to(
            outputs.composite.device)
        if progress is not None:
            progress(stop, n)
    return outputs
