"""Sliding-window geometry shared by Conv and pooling VJPs: explicit pads and the transposed conv
that maps an output-shaped gradient back onto the input grid."""

from __future__ import annotations

from ..registry import UnsupportedVariant, VjpContext


def window_attrs(ctx: VjpContext, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads) of a Conv/Pool node with auto_pad resolved from static shapes."""
    nd = len(kernel)
    strides = list(ctx.attr("strides", [1] * nd))
    dilations = list(ctx.attr("dilations", [1] * nd))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    in_sp = ctx.shape(ctx.x)[2:]
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * nd)))
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(in_sp, kernel, strides, dilations):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    else:
        raise UnsupportedVariant(f"auto_pad={auto_pad!r} is unknown")
    return strides, dilations, pads


def transpose_geometry(in_sp, out_sp, kernel, strides, dilations, pads) -> tuple[list[int], list[int]]:
    """Pads and output_padding for a ConvTranspose whose output has exactly the forward input's size.

    ConvTranspose output = s*(o-1) + output_padding + (k-1)*d + 1 - pad_begin - pad_end. When a
    ceil-mode window overhangs the input, the overhang is cropped by raising pad_end instead.
    """
    nd = len(kernel)
    begins, ends, out_pad = list(pads[:nd]), list(pads[nd:]), []
    for i in range(nd):
        full = strides[i] * (out_sp[i] - 1) + (kernel[i] - 1) * dilations[i] + 1
        extra = in_sp[i] - (full - begins[i] - ends[i])
        if extra >= 0:
            out_pad.append(extra)
        else:
            ends[i] += -extra
            out_pad.append(0)
    return begins + ends, out_pad


def conv_transpose_back(ctx: VjpContext, g: str, weight: str, kernel: list[int], group: int) -> str:
    """ConvTranspose of ``g`` with ``weight`` onto the forward input's grid, using the node's window attrs."""
    strides, dilations, pads = window_attrs(ctx, kernel)
    in_sp, out_sp = ctx.shape(ctx.x)[2:], ctx.shape(ctx.y)[2:]
    t_pads, out_pad = transpose_geometry(in_sp, out_sp, kernel, strides, dilations, pads)
    attrs = {"strides": strides, "dilations": dilations, "pads": t_pads, "group": group,
             "kernel_shape": list(kernel)}
    if any(out_pad):
        attrs["output_padding"] = out_pad
    return ctx.emit.op("ConvTranspose", [g, weight], **attrs)
