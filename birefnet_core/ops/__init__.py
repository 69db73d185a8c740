"""Operators BiRefNet needs beyond torch: the modulated deformable convolution."""

from .deform_conv import (
    BACKEND_ENV,
    BACKEND_NAMES,
    MEMORY_ENV,
    DeformableConv2d,
    available_backends,
    deform_conv2d,
    select_backend,
)
from .portable import DEFAULT_MEMORY_BUDGET
from .spec import DeformSpec, check_arguments

__all__ = [
    "BACKEND_ENV",
    "BACKEND_NAMES",
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_ENV",
    "DeformSpec",
    "DeformableConv2d",
    "available_backends",
    "check_arguments",
    "deform_conv2d",
    "select_backend",
]
