"""Inference: images of any size in, probability masks at the same size out.

``Predictor`` owns everything around the network's forward: input checks and conversion,
chunking of large batches, the dtype policy, out-of-memory halving. Each model family has a
pipeline here (``BiRefNetPipeline``, ``FocusPipeline``; the table in
:mod:`birefnet_core.models.families` says which) with its resize to the network size on the
model's device, its normalisation and its post-processing back to each input's size. Nothing
round-trips through PIL or NumPy.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .streaming import Downloader, Uploader

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = (1024, 1024)  # (W, H) when neither the caller nor the model's variant says
# torch.OutOfMemoryError appeared in torch 2.5; ComfyUI installs may be older
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


CPU_DTYPE_ENV = "BIREFNET_CPU_DTYPE"


def auto_dtype(device: torch.device) -> torch.dtype:
    """The default inference dtype: bfloat16 on CUDA where supported, else float16; on the CPU
    bfloat16 where it computes bfloat16 natively, else float32 (:func:`cpu_auto_dtype`); float32
    on MPS and other devices (half precision there is slower or unsupported on many machines)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return cpu_auto_dtype()[0]
    return torch.float32


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> Dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (names in lower case); {} where there is
    no /proc/cpuinfo (macOS, Windows)."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:  # the end of the first processor's block
                        break
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags() -> FrozenSet[str]:
    """The CPU's instruction-set flags ("flags" on x86, "Features" on ARM)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("features") or "").split())


def cpu_model_name() -> str:
    """The CPU's name as /proc/cpuinfo gives it, else what the platform module knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_has_native_bfloat16() -> bool:
    """True when the CPU computes in bfloat16 natively (x86: AVX512-BF16 or AMX-BF16; ARM: the
    BF16 extension). Elsewhere, and where it cannot be told (no /proc/cpuinfo), False: torch then
    converts every bfloat16 operation through float32, many times slower than float32 itself."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def _torch_cpu_capability() -> Optional[str]:
    """The vector instruction level torch's CPU kernels run at ("AVX512", "AVX2", "DEFAULT"...),
    None where this torch cannot say."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    try:
        return str(get()) if get is not None else None
    except Exception:  # noqa: BLE001 - only informative
        return None


def cpu_auto_dtype() -> Tuple[torch.dtype, str]:
    """What ``dtype="auto"`` gives on the CPU, and why.

    bfloat16 where the CPU computes it natively and torch uses that: x86 with AVX512-BF16 or
    AMX-BF16 and torch's AVX512 kernels (there bfloat16 was measured 1.5-3x faster than float32,
    with masks within 0.004 of float32's). float32 everywhere else: without native bfloat16
    (AVX2-only CPUs, older AVX512 ones) bfloat16 is emulated, many times slower; ARM CPUs with the
    BF16 extension and machines where it cannot be told (no /proc/cpuinfo: macOS, Windows) stay
    on float32 as well, as bfloat16 there is unmeasured. ``BIREFNET_CPU_DTYPE=float32`` (or
    ``bfloat16``) overrides the choice; ``auto`` or unset keeps it."""
    override = os.environ.get(CPU_DTYPE_ENV, "").strip().lower()
    if override and override != "auto":
        dtype = {"float32": torch.float32, "fp32": torch.float32,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(override)
        if dtype is not None:
            if dtype == torch.bfloat16 and not cpu_has_native_bfloat16():
                warn_once("emulated bfloat16", "bfloat16 runs emulated on this CPU (no native bfloat16 "
                          "instructions), many times slower than float32: unset %s", CPU_DTYPE_ENV)
            return dtype, f"{CPU_DTYPE_ENV}={override} in the environment"
        warn_once(f"bad {CPU_DTYPE_ENV}", "%s=%r is not auto, float32 or bfloat16: ignored",
                  CPU_DTYPE_ENV, os.environ.get(CPU_DTYPE_ENV))
    flags = _cpu_flags()
    if not cpu_has_native_bfloat16():
        if not flags:
            return torch.float32, "the CPU's bfloat16 support cannot be told here (no /proc/cpuinfo)"
        return torch.float32, "no native bfloat16 on this CPU (emulated bfloat16 is many times slower)"
    x86 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if not x86:
        return torch.float32, ("bfloat16 on this ARM CPU is unmeasured: auto picks it only on x86 with "
                               f"AVX512-BF16/AMX ({CPU_DTYPE_ENV}=bfloat16 to try it)")
    capability = _torch_cpu_capability()
    if capability is not None and not capability.upper().startswith("AVX512"):
        return torch.float32, (f"the CPU has {'/'.join(x86)} but torch runs its {capability} kernels "
                               "(bfloat16 would be emulated)")
    return torch.bfloat16, (f"the CPU computes bfloat16 natively ({'/'.join(x86)}): about 1.5-3x faster "
                            "than float32")


def cpu_has_native_float16() -> bool:
    """True when the CPU computes in float16 natively (x86: AVX512-FP16 or AMX-FP16; ARM: FP16
    arithmetic, ``asimdhp``); False elsewhere and where it cannot be told."""
    return bool(_cpu_flags() & {"avx512_fp16", "amx_fp16", "asimdhp"})


def parse_dtype(value: Union[None, str, torch.dtype], device: torch.device) -> torch.dtype:
    """The dtype named by ``value`` (a torch dtype, "float32"/"fp32", "float16"/"fp16"/"half",
    "bfloat16"/"bf16", or None/"auto" for :func:`auto_dtype`) for a model on ``device``.

    Half precision asked for explicitly on a CPU without native support for it is allowed, with
    one warning per dtype and process: it is correct but emulated, many times slower."""
    if value is None or value == "auto":
        return auto_dtype(device)
    if isinstance(value, torch.dtype):
        dtype = value
    else:
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(str(value).lower())
        if dtype is None:
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {value!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if dtype != torch.float32 and device is not None and torch.device(device).type == "cpu":
        native = cpu_has_native_bfloat16() if dtype == torch.bfloat16 else cpu_has_native_float16()
        if not native:
            name = str(dtype).replace("torch.", "")
            warn_once(f"emulated {name}", "%s runs emulated on this CPU (no native %s instructions), many times "
                      "slower than float32: use float32 (or dtype auto) on this CPU", name, name)
    return dtype


def _multiple_of_32(value: int, what: str) -> int:
    rounded = max(32, int(round(value / 32)) * 32)
    if rounded != value:
        logger.warning("%s %d is not a multiple of 32; using %d", what, value, rounded)
    return rounded


@dataclass(frozen=True)
class Resolution:
    """The size the network sees: a fixed W x H, the input's aspect ratio with the long side
    ``long_side`` (both sides multiples of 32), for models trained at varying sizes, or the
    input's aspect ratio with the short side ``short_side`` and the long side at most
    ``max_side`` (FOCUS's test-time rule, detectron2's ``ResizeShortestEdge``; sides are not
    rounded: the FOCUS pipeline pads to multiples of 32 instead)."""

    width: int = 0
    height: int = 0
    long_side: int = 0
    short_side: int = 0
    max_side: int = 0

    @classmethod
    def fixed(cls, width: int, height: int) -> "Resolution":
        if width <= 0 or height <= 0:
            raise ValueError(f"resolution must be positive, got {width}x{height}")
        return cls(width=_multiple_of_32(width, "width"), height=_multiple_of_32(height, "height"))

    @classmethod
    def keep_aspect(cls, long_side: int) -> "Resolution":
        if long_side <= 0:
            raise ValueError(f"long side must be positive, got {long_side}")
        return cls(long_side=_multiple_of_32(long_side, "long side"))

    @classmethod
    def shortest_edge(cls, short_side: int, max_side: Optional[int] = None) -> "Resolution":
        max_side = 4 * short_side if max_side is None else max_side
        if short_side <= 0 or max_side < short_side:
            raise ValueError(f"short side must be positive and at most the long-side limit, got {short_side} "
                             f"(limit {max_side})")
        return cls(short_side=short_side, max_side=max_side)

    @classmethod
    def parse(cls, value: Union[None, str, int, Tuple[int, int], "Resolution"],
              native: Tuple[int, int] = DEFAULT_RESOLUTION) -> "Resolution":
        """``None``/"native" (the model's own), "WxH", an int N or "N" (N x N), (W, H),
        "keep:N" (keep the aspect ratio, long side N) or "short:N" / "short:N:M" (keep the aspect
        ratio, short side N, long side at most M, default 4N)."""
        if isinstance(value, Resolution):
            return value
        if value is None or (isinstance(value, str) and value.strip().lower() == "native"):
            return cls.fixed(*native)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls.fixed(value, value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls.fixed(int(value[0]), int(value[1]))
        if isinstance(value, str):
            text = value.strip().lower()
            match = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", text)
            if match:
                return cls.fixed(int(match.group(1)), int(match.group(2)))
            match = re.fullmatch(r"(?:keep|keep-aspect|long)\s*[:=]?\s*(\d+)", text)
            if match:
                return cls.keep_aspect(int(match.group(1)))
            match = re.fullmatch(r"short\s*[:=]?\s*(\d+)(?:\s*[:/]\s*(\d+))?", text)
            if match:
                return cls.shortest_edge(int(match.group(1)), int(match.group(2)) if match.group(2) else None)
            if text.isdigit():
                return cls.fixed(int(text), int(text))
        raise ValueError(f"resolution must be 'native', 'WxH', 'N', 'keep:N' or 'short:N', got {value!r}")

    def size_for(self, height: int, width: int) -> Tuple[int, int]:
        """(H, W) the network runs at for an input of ``height`` x ``width``."""
        if self.short_side:
            # detectron2's ResizeShortestEdge.get_output_shape, the FOCUS test-time size
            scale = self.short_side / min(height, width)
            new_h, new_w = height * scale, width * scale
            if max(new_h, new_w) > self.max_side:
                scale = self.max_side / max(new_h, new_w)
                new_h, new_w = new_h * scale, new_w * scale
            return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))
        if not self.long_side:
            return self.height, self.width
        scale = self.long_side / max(height, width)
        return (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))

    def __str__(self) -> str:
        if self.short_side:
            return f"short:{self.short_side}:{self.max_side}"
        return f"keep:{self.long_side}" if self.long_side else f"{self.width}x{self.height}"


LAYOUTS = ("BCHW", "BHWC")
_warned: set = set()


def warn_once(key: str, message: str, *args) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def as_images(images: torch.Tensor, layout: str = "auto") -> torch.Tensor:
    """Any accepted image batch -> a [B, 3, H, W] view of it (same device and dtype, no copy).

    ``layout`` states where the channels are: "BCHW" (or "CHW" for one image), "BHWC" (or
    "HWC"; channels-last, as ComfyUI's IMAGE and decoded video), or "auto", which accepts only
    shapes with a single reading and refuses ambiguous ones (e.g. [1, 3, W, 3], an image 3
    pixels tall) instead of guessing from the image's size. C = 1 (grey, repeated), 3 (RGB) or 4
    (RGBA, alpha dropped); values as :func:`to_unit_float` accepts them.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    layout = layout.upper()
    if layout in ("CHW", "HWC"):
        layout = "B" + layout
    if layout not in LAYOUTS + ("AUTO",):
        raise ValueError(f"layout must be 'BCHW', 'BHWC' or 'auto', got {layout!r}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W] or [B, H, W, C], got shape {list(images.shape)}")
    if layout == "AUTO":
        first, last = images.shape[1] in (1, 3, 4), images.shape[-1] in (1, 3, 4)
        if first and last:
            raise ValueError(f"image shape {list(images.shape)} reads both as [B, C, H, W] and as [B, H, W, C]: "
                             "pass layout='BCHW' or layout='BHWC'")
        layout = "BHWC" if last else "BCHW"
    if layout == "BHWC":
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] not in (1, 3, 4):
        raise ValueError(f"images ({layout}) must have 1, 3 or 4 channels, got shape {list(images.shape)}")
    if images.dtype == torch.bool or images.is_complex():
        raise ValueError(f"images must be float in 0..1 or integer 8-bit levels, got {images.dtype}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


def to_unit_float(values: torch.Tensor) -> torch.Tensor:
    """Images or masks as float32 in 0..1, whatever the dtype (same device; no copy when the
    values are float32 in 0..1 already).

    uint8 and other integer dtypes are 8-bit levels, divided by 255 (torch.uint16 by 65535);
    integer values outside 0..255 are an error (scale 16-bit data to float first). Floats are
    expected in 0..1: values outside are clamped, with a warning the first time.
    """
    if values.dtype == torch.uint8:
        return values.float() / 255.0
    if values.dtype == getattr(torch, "uint16", None):
        return values.float() / 65535.0
    if not values.is_floating_point():
        if values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"image or mask values must be float in 0..1 or 8-bit integer levels, got {values.dtype}")
        low, high = (int(v) for v in torch.aminmax(values)) if values.numel() else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(f"integer image or mask values must be 8-bit levels 0..255, got {low}..{high} "
                             f"({values.dtype}); convert other ranges to float 0..1")
        return values.float() / 255.0
    values = values.float()
    low, high = (float(v) for v in torch.aminmax(values)) if values.numel() else (0.0, 0.0)
    if not (low >= 0.0 and high <= 1.0):
        if bool(torch.isfinite(values).all()):  # NaN and infinity are refused where they matter
            warn_once("range", "image or mask values outside 0..1 (%.3g..%.3g) are clamped to 0..1", low, high)
        values = values.clamp(0.0, 1.0)
    return values


class BiRefNetPipeline:
    """BiRefNet's test-time pipeline: resize to the network size (the variant's native size by
    default), ImageNet normalisation, the network's logits, sigmoid, resize back."""

    def __init__(self, model: torch.nn.Module, resolution) -> None:
        self.model = model
        variant = getattr(model, "variant", None)
        native = tuple(variant.resolution) if variant is not None else DEFAULT_RESOLUTION
        self.resolution = Resolution.parse(resolution, native)
        config = getattr(model, "config", None)
        self.min_side = config.spec.min_side if config is not None else 32

    def network_size(self, height: int, width: int) -> Tuple[int, int]:
        h, w = self.resolution.size_for(height, width)
        if self.resolution.short_side:  # a short-side size is not rounded by Resolution: round it here
            h, w = max(32, int(round(h / 32)) * 32), max(32, int(round(w / 32)) * 32)
        if min(h, w) < self.min_side:
            warn_once(f"min_side {h}x{w}", "network size %dx%d is below the smallest this backbone runs at (%d per "
                      "side); using %dx%d", w, h, self.min_side, max(w, self.min_side), max(h, self.min_side))
            h, w = max(h, self.min_side), max(w, self.min_side)
        return h, w

    def preprocess(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        size = self.network_size(images.shape[-2], images.shape[-1])
        x = images
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)

    def probabilities(self, images: torch.Tensor, dtype: torch.dtype, binary: bool) -> torch.Tensor:
        h, w = images.shape[-2:]
        probs = self.model(self.preprocess(images, dtype)).float().sigmoid()
        if tuple(probs.shape[-2:]) != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=probs.shape[-2] > h or probs.shape[-1] > w)
        probs = probs[:, 0].clamp_(0.0, 1.0)
        return (probs > 0.5).float() if binary else probs


FOCUS_PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 scale (FOCUS's PIXEL_MEAN / PIXEL_STD)
FOCUS_PIXEL_STD = (58.395, 57.12, 57.375)
FOCUS_RESOLUTION = Resolution.shortest_edge(512, 2048)  # its test-time ResizeShortestEdge(512, max 2048)
FOCUS_SIZE_DIVISIBILITY = 32


class FocusPipeline:
    """FOCUS's test-time pipeline (notes §1 and §6): resize with the short side 512 and the long
    side at most 2048, rounded to 8-bit levels as the official uint8 resize gives them,
    (x - mean) / std on the 0..255 scale, zero padding at the bottom and right to multiples of
    32, the network, then the official post-processing: the mask logits upsampled to the padded
    size, cropped to the resized image, resized to the input size, the two queries merged.

    Differences from the official pipeline: the resize runs on the device (:meth:`resize`, PIL's
    bilinear filter in float, rounded to levels after each pass) instead of in PIL; see
    ``python -m birefnet_core bench focus-resize`` for how far that moves the output. The soft
    map (the official ``sem_seg[0]``, a sum over both queries) is clamped to 0..1. ``resolution``
    other than native: "WxH" resizes to exactly
    that (then pads), "keep:N" keeps the aspect ratio with the long side N, "short:N[:M]" is the
    official rule with other sizes.
    """

    min_side = 1

    def __init__(self, model: torch.nn.Module, resolution) -> None:
        self.model = model
        native = resolution is None or str(resolution).strip().lower() == "native"
        self.resolution = FOCUS_RESOLUTION if native else Resolution.parse(resolution)

    def network_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H, W) of the resized image; the network runs on it padded to multiples of 32."""
        return self.resolution.size_for(height, width)

    def preprocess(self, images: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """float [B, 3, H, W] 0..1 -> (normalised padded float32 input, resized size)."""
        size = self.network_size(images.shape[-2], images.shape[-1])
        # the official pipeline resizes the uint8 image: the network sees integer levels
        x = self.resize((images * 255.0).add_(0.5).floor_(), size)
        mean = torch.tensor(FOCUS_PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(FOCUS_PIXEL_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        pad_h = -size[0] % FOCUS_SIZE_DIVISIBILITY
        pad_w = -size[1] % FOCUS_SIZE_DIVISIBILITY
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        # float32: the network computes its edge input from these values and casts the rest itself
        return x, size

    @staticmethod
    def resize(levels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """[B, 3, H, W] 8-bit levels (0..255, integers) -> ``size``, as PIL resizes a uint8 image
        with its bilinear filter: the width first, then the height, each pass averaging over the
        source when shrinking (torch's antialiased filter is PIL's) and rounded to levels (PIL
        keeps its intermediate image in uint8). Matches PIL on all but ~0.03 % of values (by one
        level: PIL's fixed-point coefficients)."""
        x = levels
        if x.shape[-1] != size[1]:
            x = F.interpolate(x, size=(x.shape[-2], size[1]), mode="bilinear", align_corners=False, antialias=True)
            x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
        if x.shape[-2] != size[0]:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
            x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
        return x

    def probabilities(self, images: torch.Tensor, dtype: torch.dtype, binary: bool) -> torch.Tensor:
        from .models.focus import mask_of_interest

        h, w = images.shape[-2:]
        x, size = self.preprocess(images, dtype)
        out = self.model(x)
        soft, hard = mask_of_interest(out.class_logits.float(), out.mask_logits.float(), tuple(x.shape[-2:]), size,
                                      (h, w))
        return hard.float() if binary else soft.clamp_(0.0, 1.0)


class Predictor:
    """Runs a segmentation model (BiRefNet or FOCUS) on image batches of any size.

    Args:
        model: a model from ``load_model`` or ``build_model``; it is put in eval mode and cast to
            ``dtype`` in place. Its family (:mod:`birefnet_core.models.families`) says which
            pipeline runs it (resize, normalisation, post-processing).
        resolution: see :meth:`Resolution.parse`; default (None or "native") the model's own:
            a BiRefNet variant's native size, FOCUS's short side 512 (long side at most 2048).
        batch_size: images per forward pass; larger batches are cut into chunks.
        dtype: inference dtype; default the model's own (``load_model`` applies :func:`auto_dtype`).
            The dtype and device belong to the model: predictors sharing a model follow it when
            one of them (or anyone) casts or moves it.
        binary: return a 0/1 mask instead of the soft probability: FOCUS's official binary mask
            of interest (its two queries merged, what its evaluator scores); BiRefNet's
            probability > 0.5.
        refine: two passes for large images (:mod:`birefnet_core.two_pass`): None/False/"off"
            (default) one pass; "native"/True a second pass on the subject's cut-out at the
            model's size (FOCUS: its short side, square); N, "N" or "WxH" at that size (larger
            for HR and dynamic models); or a :class:`~birefnet_core.two_pass.TwoPass` with the
            box threshold, margin and feather. With ``binary`` both passes are binary and the
            merged mask is thresholded at 0.5.
        compile: "off", "on" or "cudagraphs" (:mod:`birefnet_core.compiled`); default the
            model's own setting (:func:`~birefnet_core.compiled.set_compile`, off unless set).
    """

    def __init__(self, model: torch.nn.Module, *, resolution=None, batch_size: int = 1,
                 dtype: Union[None, str, torch.dtype] = None, binary: bool = False, refine=None,
                 compile=None) -> None:
        from .compiled import compiled_forward
        from .models.families import family_of_model
        from .two_pass import TwoPass

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        if dtype is not None:
            self.model.to(dtype=parse_dtype(dtype, self.device))
        self.family = family_of_model(model)
        self.pipeline = self.family.pipeline_class()(model, resolution)
        self.batch_size = batch_size
        self.binary = bool(binary)
        self.refine = TwoPass.parse(refine)
        self.refine_pipeline = None
        self.no_subject = 0  # images of the last predict() where pass 2 found no subject (kept pass 1)
        if self.refine is not None:
            size = self.refine.size
            if size is None or (isinstance(size, str) and size.strip().lower() == "native"):
                size = self._native_square()
            self.refine_pipeline = self.family.pipeline_class()(model, Resolution.parse(size))
        # the pipelines run the network through the compiled module when compiling is on
        self.forward = compiled_forward(model, compile)
        for pipeline in (self.pipeline, self.refine_pipeline):
            if pipeline is not None:
                pipeline.model = self.forward
        self._warned_memory = False

    def _native_square(self) -> Tuple[int, int]:
        """The model's own size as a fixed (W, H) for pass 2: a BiRefNet variant's training size,
        FOCUS's short side squared (keep:N: N x N)."""
        native = self.family.pipeline_class()(self.model, None).resolution
        if native.short_side:
            return native.short_side, native.short_side
        if native.long_side:
            return native.long_side, native.long_side
        return native.width, native.height

    @property
    def refine_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) pass 2 runs at, None without ``refine``."""
        if self.refine_pipeline is None:
            return None
        r = self.refine_pipeline.resolution
        return self.refine_pipeline.network_size(r.height, r.width)

    @property
    def resolution(self) -> Resolution:
        return self.pipeline.resolution

    @property
    def min_side(self) -> int:
        return self.pipeline.min_side

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _probabilities(self, chunk: torch.Tensor) -> torch.Tensor:
        """Probabilities [n, h, w] float32 for one chunk already on the device (both passes with
        ``refine``)."""
        images = to_unit_float(chunk)
        probs = self.pipeline.probabilities(images, self.dtype, self.binary)
        if self.refine_pipeline is None:
            return probs
        from .two_pass import refine

        size = self.refine_size
        first = self.pipeline.network_size(images.shape[-2], images.shape[-1])
        probs, empty = refine(images, probs, self.refine, size, [first] * len(images),
                              lambda batch: self.refine_pipeline.probabilities(batch, self.dtype, self.binary))
        if empty:
            self._report_empty(len(empty))
        return (probs >= 0.5).float() if self.binary else probs

    def _report_empty(self, count: int) -> None:
        self.no_subject += count

    def _release_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def preprocess(self, images: torch.Tensor):
        """float [B, 3, H, W] in 0..1 on the model's device -> the network input (FOCUS: with the
        resized size before padding)."""
        return self.pipeline.preprocess(images, self.dtype)

    def network_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H, W) the image is resized to for an input of ``height`` x ``width`` (BiRefNet: the
        network size, each side raised to the backbone's smallest working size, warned once;
        FOCUS: before padding to multiples of 32)."""
        return self.pipeline.network_size(height, width)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, *, progress: Optional[Callable[[int, int], None]] = None,
                out: Optional[torch.Tensor] = None, layout: str = "auto") -> torch.Tensor:
        """Probabilities [B, H, W] float32 in 0..1 at the input size, on the input's device.

        ``images``: [B, C, H, W] or [B, H, W, C] as ``layout`` says (see :func:`as_images`;
        "auto" refuses shapes that read both ways), float 0..1 or 8-bit integer levels.

        ``progress(done, total)`` is called after every chunk (and may raise to cancel: what was
        written to ``out`` so far stays, nothing else changes); ``out`` is an optional
        preallocated [B, H, W] float32 tensor to write into. When the device runs out of memory
        the chunk is halved and retried (logged once); at one image per chunk the error is raised.
        """
        images = as_images(images, layout)
        b, _, h, w = images.shape
        if h == 0 or w == 0:
            raise ValueError(f"images must not be empty, got {h}x{w}")
        if out is None:
            out = torch.empty(b, h, w, dtype=torch.float32, device=images.device)
        elif tuple(out.shape) != (b, h, w) or out.dtype != torch.float32:
            raise ValueError(f"out must be float32 [{b}, {h}, {w}], got {out.dtype} {list(out.shape)}")
        size, start = self.batch_size, 0
        self.no_subject = 0
        # on CUDA with the images in host memory the next chunk is uploaded while this one computes,
        # and results are downloaded while the next one does (birefnet_core.streaming)
        uploader = Uploader(images, self.device)
        with Downloader(self.device, out.device) as downloader:
            while start < b:
                # one chunk at a time on the device: host memory never holds a converted copy of the batch
                chunk = uploader.take(start, start + size)
                uploader.prefetch(start + size, start + 2 * size)
                if chunk.is_floating_point() and not bool(torch.isfinite(chunk).all()):
                    raise ValueError(f"images {start}..{start + len(chunk) - 1} contain NaN or infinite values")
                try:
                    probs = self._probabilities(chunk)
                except OUT_OF_MEMORY:
                    del chunk
                    if size == 1:
                        raise
                    size = max(1, size // 2)
                    self._release_device_memory()
                    if not self._warned_memory:
                        logger.warning("out of memory on %s: continuing with %d image(s) per chunk", self.device,
                                       size)
                        self._warned_memory = True
                    continue
                downloader.put(out[start:start + len(probs)], probs)
                downloader.next_chunk()
                start += len(probs)
                if progress is not None:
                    progress(start, b)
        if self.no_subject:
            logger.warning("two-pass: no subject found (nothing at or above %.2f) in %d of %d image(s): pass 2 "
                           "skipped there, their masks are pass 1's", self.refine.threshold, self.no_subject, b)
        return out
