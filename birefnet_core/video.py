"""Video matting: frames streamed through the network in chunks, with temporal smoothing.

Memory: the caller's frames stay where they are (a CPU batch in ComfyUI); one chunk at a time is
moved to the device, and results are written into preallocated outputs, so the extra memory is
the outputs plus O(chunk), whatever the length of the video. The outputs themselves are what a
caller asks for: any of mask, RGBA and composite, in float32 or float16 (:class:`VideoOutputs`).

Temporal smoothing is a motion-gated exponential moving average of the probabilities: where the
image does not change, the new alpha moves towards the prediction by ``rate`` per frame (damping
frame-to-frame flicker); where the image changes (motion), the rate rises to 1 so moving edges
follow at once instead of leaving ghosts. It is causal, so its state after frame t is all that a
later window needs: a video fed in windows (VideoHelperSuite's Meta Batch Manager) gives exactly
the result of one run over all frames when the same :class:`TemporalSmoother` carries on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .inference import Predictor, as_images, to_unit_float
from .streaming import Downloader, Uploader
from .matting import Color, MatteOptions, over_color, parse_color, refine_matte, threshold

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


OUTPUT_NAMES = ("mask", "rgba", "composite")
_CHANNELS = {"mask": (), "rgba": (4,), "composite": (3,)}


def _output_names(which: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(which, str):
        which = (which,)
    names = tuple(dict.fromkeys(which))
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown or not names:
        raise ValueError(f"outputs must name one or more of {', '.join(OUTPUT_NAMES)}, got {list(which)}")
    return tuple(name for name in OUTPUT_NAMES if name in names)


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"output dtype must be a floating-point torch dtype (float32, float16), got {dtype!r}")
    return dtype


@dataclass
class VideoOutputs:
    """Preallocated results, written chunk by chunk: ComfyUI layouts, on the CPU unless asked.

    Only the outputs a caller needs are allocated (the others are None), in float32 or a
    smaller float dtype: for 300 frames of 1920x1080, mask 2.49 GB in float32 / 1.24 GB in
    float16, RGBA 9.95 / 4.98 GB, composite 7.46 / 3.73 GB (:meth:`nbytes_for`)."""

    mask: Optional[torch.Tensor] = None  # [N, H, W]
    rgba: Optional[torch.Tensor] = None  # [N, H, W, 4] straight alpha (estimated foreground colours if asked)
    composite: Optional[torch.Tensor] = None  # [N, H, W, 3] over the background colour

    @staticmethod
    def nbytes_for(n: int, h: int, w: int, which: Sequence[str] = OUTPUT_NAMES,
                   dtype: torch.dtype = torch.float32) -> int:
        """Bytes that :meth:`allocate` takes for these outputs."""
        item = torch.empty((), dtype=_output_dtype(dtype)).element_size()
        return sum(n * h * w * (_CHANNELS[name] or (1,))[0] * item for name in _output_names(which))

    @classmethod
    def allocate(cls, n: int, h: int, w: int, device: Union[str, torch.device] = "cpu", *,
                 which: Sequence[str] = OUTPUT_NAMES, dtype: torch.dtype = torch.float32) -> "VideoOutputs":
        """Uninitialised outputs for ``n`` frames of ``h`` x ``w``: those named in ``which``
        (mask, rgba, composite), of ``dtype``; the rest None."""
        dtype = _output_dtype(dtype)
        return cls(**{name: torch.empty(n, h, w, *_CHANNELS[name], device=device, dtype=dtype)
                      for name in _output_names(which)})

    @property
    def computed(self) -> Tuple[str, ...]:
        """The names of the outputs present."""
        return tuple(name for name in OUTPUT_NAMES if getattr(self, name) is not None)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.computed)

    def _check(self, n: int, h: int, w: int) -> None:
        if not self.computed:
            raise ValueError("outputs hold none of mask, rgba, composite: nothing to compute")
        for name in self.computed:
            tensor = getattr(self, name)
            want = (n, h, w, *_CHANNELS[name])
            if tuple(tensor.shape) != want or not tensor.is_floating_point():
                raise ValueError(f"outputs.{name} must be a float tensor of shape {list(want)}, got "
                                 f"{tensor.dtype} {list(tensor.shape)}")


def matte_frames(
    predictor: Predictor,
    frames: torch.Tensor,
    *,
    smoother: Optional[TemporalSmoother] = None,
    matte: Optional[MatteOptions] = None,
    background_color: Color = "#ffffff",
    progress: Optional[Callable[[int, int], None]] = None,
    outputs: Optional[VideoOutputs] = None,
    which: Optional[Sequence[str]] = None,
    dtype: Optional[torch.dtype] = None,
    mask_threshold: float = 0.0,
    rgba_fill: Optional[Color] = None,
) -> VideoOutputs:
    """Mask, RGBA and composite for ``frames`` ([N, H, W, C] as ComfyUI's IMAGE and decoded video,
    C = 1, 3 or 4; float 0..1 or uint8), ``predictor.batch_size`` frames at a time on the
    predictor's device.

    Only the outputs named in ``which`` (default all three) are allocated and computed, in
    ``dtype`` (default float32; float16 halves the memory and stays within 2.5e-4 of float32 on
    0..1); or pass preallocated ``outputs``, whose non-None fields say what is computed.
    ``smoother`` (state carried across calls) damps flicker; ``mask_threshold`` > 0 makes the mask
    hard (>= threshold -> 1, else 0) before ``matte`` refines each chunk (mask operations, guided
    edges, foreground colours; see :class:`MatteOptions`; its foreground colours are only
    estimated when rgba or composite is computed). The RGBA colours are the (estimated) image's,
    or over ``rgba_fill`` where the subject is absent when a colour is given.
    ``progress(done, total)`` runs after every chunk and may raise to cancel: outputs written so
    far are complete frames, and the smoother's state is only advanced by completed chunks.
    """
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [N, H, W, C] with C = 1, 3 or 4, got {list(frames.shape)}")
    pixels = as_images(frames, "BHWC")
    n, _, h, w = pixels.shape
    parse_color(background_color)
    if rgba_fill is not None:
        parse_color(rgba_fill)
    if outputs is None:
        outputs = VideoOutputs.allocate(n, h, w, which=OUTPUT_NAMES if which is None else which,
                                        dtype=torch.float32 if dtype is None else dtype)
    elif which is not None or dtype is not None:
        raise ValueError("pass either preallocated outputs or which/dtype, not both")
    outputs._check(n, h, w)
    colours = outputs.rgba is not None or outputs.composite is not None
    if matte is not None and not colours and matte.foreground != "none":
        matte = replace(matte, foreground="none")  # colours nobody reads: only the alpha steps run
    device = predictor.device
    step = predictor.batch_size
    # uploads one chunk ahead and downloads one behind on CUDA (birefnet_core.streaming)
    uploader = Uploader(pixels, device)
    with Downloader(device, getattr(outputs, outputs.computed[0]).device) as downloader:
        for start in range(0, n, step):
            stop = min(n, start + step)
            chunk = uploader.take(start, stop)
            uploader.prefetch(stop, stop + step)
            chunk = to_unit_float(chunk)
            probs = predictor.predict(chunk, layout="BCHW")
            if smoother is not None:
                probs = smoother(chunk, probs)
            if mask_threshold:
                probs = threshold(probs, mask_threshold)
            if matte is not None:
                chunk, probs = refine_matte(chunk, probs, matte)
            # each output is written straight from the chunk (converted to its dtype on the device)
            if outputs.mask is not None:
                downloader.put(outputs.mask[start:stop], probs)
            if outputs.rgba is not None:
                rgb = chunk if rgba_fill is None else over_color(chunk, probs, rgba_fill)
                downloader.put(outputs.rgba[start:stop, ..., :3], rgb.movedim(1, -1))
                downloader.put(outputs.rgba[start:stop, ..., 3], probs)
            if outputs.composite is not None:
                downloader.put(outputs.composite[start:stop], over_color(chunk, probs, background_color).movedim(1, -1))
            downloader.next_chunk()
            if progress is not None:
                progress(stop, n)
    return outputs
