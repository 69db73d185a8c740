"""Operators the models need beyond torch.

* ``deform_conv2d`` / ``DeformableConv2d``: the modulated deformable convolution (BiRefNet's
  decoder). Backends triton / torchvision / portable; ``BIREFNET_DEFORM_BACKEND``.
* ``ms_deform_attn`` / ``MultiScaleDeformableAttention``: multi-scale deformable attention
  (FOCUS's adapter and pixel decoder). Backends triton / portable; ``BIREFNET_MSDA_BACKEND``.
  Its dispatcher (``select_backend``, ``available_backends``, ``backend_statuses``,
  ``candidate_order``, ``BACKENDS``) lives in :mod:`birefnet_core.ops.msda`; the names below
  with an ``MSDA``/``msda_`` prefix are the same objects.
"""

from .deform_conv import (
    BACKEND_ENV,
    BACKEND_NAMES,
    MEMORY_ENV,
    DeformableConv2d,
    available_backends,
    deform_conv2d,
    select_backend,
)
from .msda import BACKEND_ENV as MSDA_BACKEND_ENV
from .msda import BACKEND_NAMES as MSDA_BACKEND_NAMES
from .msda import MEMORY_ENV as MSDA_MEMORY_ENV
from .msda import MultiScaleDeformableAttention, ms_deform_attn
from .msda import available_backends as msda_available_backends
from .msda import backend_statuses as msda_backend_statuses
from .msda import select_backend as msda_select_backend
from .msda_spec import MSDASpec, check_msda_arguments
from .portable import DEFAULT_MEMORY_BUDGET
from .spec import DeformSpec, check_arguments

__all__ = [
    "BACKEND_ENV",
    "BACKEND_NAMES",
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_ENV",
    "MSDASpec",
    "MSDA_BACKEND_ENV",
    "MSDA_BACKEND_NAMES",
    "MSDA_MEMORY_ENV",
    "DeformSpec",
    "DeformableConv2d",
    "MultiScaleDeformableAttention",
    "available_backends",
    "check_arguments",
    "check_msda_arguments",
    "deform_conv2d",
    "ms_deform_attn",
    "msda_available_backends",
    "msda_backend_statuses",
    "msda_select_backend",
    "select_backend",
]
