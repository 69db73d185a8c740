"""Argument checking for the modulated deformable convolution.

Every backend receives a :class:`DeformSpec` built here, so shape, device and dtype errors are
raised once, in Python, with the argument's name and the shape that was expected, before any
kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

IntPair = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class DeformSpec:
    """Normalised geometry of one deformable-convolution call."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int  # weight groups, as in nn.Conv2d
    offset_groups: int  # channel groups that share one set of offsets
    out_h: int
    out_w: int

    @property
    def taps(self) -> int:
        return self.kernel_h * self.kernel_w


def _pair(name: str, value: IntPair, minimum: int) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_arguments(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    mask: Optional[torch.Tensor],
) -> DeformSpec:
    """Validate the arguments of ``deform_conv2d`` and return the call's geometry.

    Raises ``ValueError`` naming the offending argument and the expected shape. The rules are
    torchvision's: ``input`` [B, C_in, H, W]; ``weight`` [C_out, C_in / groups, kH, kW];
    ``offset`` [B, 2 * offset_groups * kH * kW, H_out, W_out] with (dy, dx) interleaved per tap;
    ``mask`` [B, offset_groups * kH * kW, H_out, W_out]; ``bias`` [C_out].
    """
    tensors = {"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.device != input.device:
            raise ValueError(
                f"{name} is on {t.device} but input is on {input.device}: "
                "move all tensors to one device"
            )
        if t.dtype != input.dtype:
            raise ValueError(
                f"{name} has dtype {t.dtype} but input has dtype {input.dtype}: "
                "cast all tensors to one dtype"
            )

    if input.dim() != 4:
        raise ValueError(f"input must have shape [B, C_in, H, W], got {_shape(input)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must have shape [C_out, C_in/groups, kH, kW], got {_shape(weight)}")
    batch, in_channels, height, width = input.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    if channels_per_group == 0 or in_channels % channels_per_group != 0:
        raise ValueError(
            f"weight has {channels_per_group} input channels per group, which does not divide "
            f"the input's {in_channels} channels (weight {_shape(weight)}, input {_shape(input)})"
        )
    groups = in_channels // channels_per_group
    if out_channels % groups != 0:
        raise ValueError(
            f"weight has {out_channels} output channels, not a multiple of its {groups} groups"
        )
    if kernel_h == 0 or kernel_w == 0:
        raise ValueError(f"weight must have a non-empty kernel, got {_shape(weight)}")

    stride_ = _pair("stride", stride, 1)
    padding_ = _pair("padding", padding, 0)
    dilation_ = _pair("dilation", dilation, 1)
    out_h = (height + 2 * padding_[0] - dilation_[0] * (kernel_h - 1) - 1) // stride_[0] + 1
    out_w = (width + 2 * padding_[1] - dilation_[1] * (kernel_w - 1) - 1) // stride_[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"input of size {height}x{width} is too small for a {kernel_h}x{kernel_w} kernel with "
            f"padding {padding_} and dilation {dilation_}: the output would be {out_h}x{out_w}"
        )

    taps = kernel_h * kernel_w
    if offset.dim() != 4 or offset.shape[1] % (2 * taps) != 0 or offset.shape[1] == 0:
        raise ValueError(
            f"offset must have shape [{batch}, 2*offset_groups*{taps}, {out_h}, {out_w}] "
            f"((dy, dx) per kernel tap), got {_shape(offset)}"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if tuple(offset.shape) != (batch, 2 * offset_groups * taps, out_h, out_w):
        raise ValueError(
            f"offset must have shape [{batch}, {2 * offset_groups * taps}, {out_h}, {out_w}], "
            f"got {_shape(offset)}"
        )
    if in_channels % offset_groups != 0:
        raise ValueError(
            f"offset has {offset_groups} offset groups, which do not divide the input's "
            f"{in_channels} channels"
        )
    if mask is not None and tuple(mask.shape) != (batch, offset_groups * taps, out_h, out_w):
        raise ValueError(
            f"mask must have shape [{batch}, {offset_groups * taps}, {out_h}, {out_w}] "
            f"(one value per kernel tap and offset group), got {_shape(mask)}"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape [{out_channels}], got {_shape(bias)}")

    return DeformSpec(
        batch=batch,
        in_channels=in_channels,
        out_channels=out_channels,
        height=height,
        width=width,
        kernel_h=kernel_h,
        kernel_w=kernel_w,
        stride=stride_,
        padding=padding_,
        dilation=dilation_,
        groups=groups,
        offset_groups=offset_groups,
        out_h=out_h,
        out_w=out_w,
    )
