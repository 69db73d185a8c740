"""Image files read with their real value range, for prediction, evaluation and training.

PIL's ``convert("RGB")`` / ``convert("L")`` clip 16-bit grey ("I;16", "I") to 255 and turn
32-bit float ("F") 0..1 into black, so every reader here goes through this module instead:

* :func:`open_image`: the file opened, decoded, EXIF-oriented and closed; every failure is one
  :class:`ImageReadError` naming the file, decompression bombs included (limit: the environment
  variable ``BIREFNET_MAX_IMAGE_PIXELS``, else PIL's ``Image.MAX_IMAGE_PIXELS``).
* :func:`image_to_array` / :func:`read_rgb`: RGB [H, W, 3], uint8 for 8-bit sources, float32
  0..1 for 16-bit and float sources.
* :func:`image_to_mask` / :func:`read_mask`: float32 [H, W] in 0..1: grey as grey, colour as
  luminance, the alpha channel when it varies.
* :func:`to_uint8`: either of them on the 8-bit scale.

What Pillow 13 produces (checked by ``tests/test_image_io.py``): 16-bit grey PNG and TIFF ->
"I;16" (big-endian TIFF -> "I;16B"); 16-bit PGM and 32-bit integer TIFF -> "I" (PGM scaled to
0..65535 whatever its maxval); 32-bit float TIFF -> "F"; 16-bit RGB PNG -> 8-bit "RGB" (Pillow
drops the low byte); 1-bit PNG -> "1"; palette PNG -> "P" (transparency in ``info``); CMYK
JPEG/TIFF -> "CMYK"; LAB TIFF -> "LAB"; YCbCr TIFF -> "YCbCr". Multi-frame files give their
first frame. ICC profiles are not applied.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
MAX_PIXELS_ENV = "BIREFNET_MAX_IMAGE_PIXELS"

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# Premultiplied "La" converts to nothing but "LA" in PIL; every other mode converts directly.
_VIA = {"La": "LA"}

# PIL keeps its decompression-bomb limit in a module global and signals through the global
# warnings filters; a read here swaps both for its duration, so reads in this process take
# turns (a second thread would otherwise save and "restore" the first one's swapped value).
_PIL_GLOBALS = threading.RLock()


class ImageReadError(ValueError):
    """An image file that cannot be read (missing, a folder, not an image, damaged, too large,
    or values without a meaning as intensities); the one-line message names the file."""


def max_image_pixels() -> Optional[int]:
    """The largest width * height that is decoded: ``BIREFNET_MAX_IMAGE_PIXELS`` when set, else
    PIL's ``Image.MAX_IMAGE_PIXELS`` (None: no limit).

    Raises:
        ImageReadError: the environment variable is not a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        with _PIL_GLOBALS:  # not while a read here has it swapped
            return Image.MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number of pixels "
                             f"(e.g. {MAX_PIXELS_ENV}=200000000 for 200 megapixels)")
    return value


def _limit_for(path: Path) -> Optional[int]:
    try:
        return max_image_pixels()
    except ImageReadError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _too_large(path: Path, size: Tuple[int, int], limit: int) -> ImageReadError:
    width, height = size
    return ImageReadError(
        f"image {path} is {width}x{height} ({_amount(width * height)}), above the limit of {_amount(limit)} "
        f"that guards against decompression bombs; set {MAX_PIXELS_ENV}=<n> to allow larger images")


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``path`` opened lazily with its header size checked; every failure, including those of
    the caller's decoding inside the block, raised as :class:`ImageReadError`.

    PIL's own bomb check (at open, and again while decoding: GIF frames can outgrow the header)
    is set to our limit for the duration and its warning raised as an error, so that a refusal
    is always ours, worded with the size and the way out.
    """
    limit = _limit_for(path)
    if path.is_dir():
        raise ImageReadError(f"cannot read image {path}: it is a folder, not an image file")
    try:
        with _PIL_GLOBALS, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limit
            try:
                try:
                    image = Image.open(path)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                    Image.MAX_IMAGE_PIXELS = None  # only to read the size for the message
                    with Image.open(path) as header:
                        raise _too_large(path, header.size, limit or 0) from None
                with image:
                    width, height = image.size
                    if width < 1 or height < 1:
                        raise ImageReadError(f"cannot read image {path}: it is empty ({width}x{height} pixels)")
                    yield image
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {path}: not an image file Pillow recognises "
                             "(unknown format or damaged header)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image {path} decodes to more than the limit of {_amount(limit or 0)} that guards "
                             f"against decompression bombs ({_first_line(exc)}); set {MAX_PIXELS_ENV}=<n> to allow "
                             "larger images") from None
    except Exception as exc:  # PIL signals damage with OSError, SyntaxError, ValueError, EOFError, struct.error ...
        raise ImageReadError(f"cannot read image {path}: {_first_line(exc)}") from exc


def open_image(path: PathLike) -> Image.Image:
    """The image in ``path``, decoded, EXIF orientation applied, its file closed.

    Raises:
        ImageReadError: missing, a folder, not an image, truncated or damaged, empty, or more
            pixels than :func:`max_image_pixels` (checked from the header, before decoding).
    """
    with _opened(Path(path)) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    return image


def read_image_size(path: PathLike) -> Tuple[int, int]:
    """(W, H) as stored (before EXIF orientation), from the header alone, after the checks of
    :func:`open_image` that need no decoding (PIL's ``verify``: PNG chunk CRCs, ...).

    Raises:
        ImageReadError: as :func:`open_image`, for the faults a header shows.
    """
    with _opened(Path(path)) as image:
        size = image.size
        image.verify()
    return size


def _label(source: Optional[PathLike]) -> str:
    return f"image {source}" if source is not None else "image"


def _deep_grey(image: Image.Image, source: Optional[PathLike]) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as float32 [H, W] in 0..1."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.float32) / np.float32(65535)
    if mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        # Pillow reads 16-bit PGM (scaled to 0..65535) and some 16-bit PNG as "I": the 16-bit scale
        # is the only one a 32-bit integer file can be assumed to be on.
        if low < 0 or high > 65535:
            raise ImageReadError(f"cannot read {_label(source)}: its 32-bit integer values run from {low} to "
                                 f"{high}, outside the 16-bit range 0..65535 read as intensities; save it as "
                                 "8-bit, 16-bit or 0..1 float")
        return values.astype(np.float32) / np.float32(65535)
    values = np.array(image, dtype=np.float32)  # "F"
    if np.isnan(values).any():
        raise ImageReadError(f"cannot read {_label(source)}: its float values include NaN")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        logger.warning("%s: float values from %g to %g clipped to 0..1", _label(source), low, high)
        np.clip(values, 0.0, 1.0, out=values)
    return values


def _is_deep(image: Image.Image) -> bool:
    return image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F")


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in _VIA:
        image = image.convert(_VIA[image.mode])
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with alpha goes to any other mode
    return image if image.mode == mode else image.convert(mode)


def image_to_array(image: Image.Image, source: Optional[PathLike] = None) -> np.ndarray:
    """RGB pixels in their real range: uint8 [H, W, 3] for 8-bit sources (every 8-bit mode; alpha
    dropped, palette resolved, premultiplied alpha undone), float32 [H, W, 3] in 0..1 for 16-bit
    ("I;16*", "I" in 0..65535: / 65535) and float ("F", clipped to 0..1) grey, repeated over RGB.

    ``source`` only names the image in messages.

    Raises:
        ImageReadError: "I" values outside 0..65535, or NaN in a float image.
    """
    if _is_deep(image):
        grey = _deep_grey(image, source)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(_to_mode(image, "RGB"))


def image_to_mask(image: Image.Image, source: Optional[PathLike] = None) -> np.ndarray:
    """A mask as float32 [H, W] in 0..1: grey in its real range (8-bit / 255, 16-bit / 65535,
    float clipped), "1" as 0/1, colour as luminance (ITU-R 601, PIL's "L"), and with an alpha
    channel (RGBA, LA, PA, La, RGBa, palette or colour-key transparency) the alpha, unless it
    is constant: then the luminance (a mask saved as opaque RGBA reads as its grey levels).

    Raises:
        ImageReadError: as :func:`image_to_array`.
    """
    if _is_deep(image):
        return _deep_grey(image, source)
    if image.mode in _ALPHA_MODES or ("transparency" in image.info and image.mode in ("P", "L", "RGB")):
        image = _to_mode(image, "LA" if image.mode in ("L", "LA", "La") else "RGBA")  # unpremultiplied
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha.astype(np.float32) / np.float32(255)
    if image.mode in ("1", "L", "LA", "La"):
        grey = _to_mode(image, "L")
    else:  # through RGB: PIL's direct YCbCr -> L takes Y, which can differ by a level; LAB -> L fails
        grey = _to_mode(image, "RGB").convert("L")
    return np.asarray(grey).astype(np.float32) / np.float32(255)


def read_rgb(path: PathLike) -> np.ndarray:
    """:func:`open_image` then :func:`image_to_array`: uint8 or float32 0..1 [H, W, 3]."""
    return image_to_array(open_image(path), path)


def read_mask(path: PathLike) -> np.ndarray:
    """:func:`open_image` then :func:`image_to_mask`: float32 [H, W] in 0..1."""
    return image_to_mask(open_image(path), path)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 unchanged; float in 0..1 (any shape) to 0..255 rounded to nearest, clipped first."""
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"to_uint8 expects uint8 or float 0..1, got {array.dtype}")
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


__all__ = ["MAX_PIXELS_ENV", "ImageReadError", "image_to_array", "image_to_mask", "max_image_pixels", "open_image",
           "read_image_size", "read_mask", "read_rgb", "to_uint8"]
