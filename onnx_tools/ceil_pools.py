"""Pools in ceil mode as ONNX Runtime runs them.

With ``ceil_mode=1`` a pool's output size is ceil((n + pads - dilation * (kernel - 1) - 1) / stride) + 1,
but ONNX Runtime (like PyTorch) drops the last window when it would start in the end padding:
MaxPool(kernel 3, stride 3, pads 1) on 32 gives 11, where onnx's shape inference says 12. Every shape
the export reads downstream of such a pool would then be wrong, and the exported graph would fail when
run. Where the last window is dropped, the pool is the same pool with ``ceil_mode=0`` (floor keeps
exactly the windows ONNX Runtime keeps), so the export reads and writes it that way.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .errors import ModelInputError
from .graph import GraphIndex

POOLS = ("MaxPool", "AveragePool")


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def sizes(n: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> tuple[int, int, int]:
    """One axis of a pool's output: (floor mode, ceil mode by the formula, ceil mode as ONNX Runtime runs
    it, where a last window that would start at or after n + begin is dropped)."""
    span = n + begin + end - dilation * (kernel - 1) - 1
    floor, ceil = span // stride + 1, -(-span // stride) + 1
    return floor, ceil, ceil - 1 if (ceil - 1) * stride >= n + begin else ceil


def _ceil_nodes(model: onnx.ModelProto) -> list[int]:
    return [i for i, node in enumerate(model.graph.node)
            if node.op_type in POOLS and node.domain in ("", "ai.onnx") and _attr(node, "ceil_mode", 0)
            and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"", "NOTSET", "")]


def as_run(model: onnx.ModelProto, index: GraphIndex) -> list[str]:
    """Write ``ceil_mode=0`` into the ceil-mode pools of ``model`` whose last window ONNX Runtime drops
    (``index``: its analysis copy, at the same node positions); returns their names. A pool that drops
    the last window on one axis and keeps a partial one on another has no floor-mode twin and is refused."""
    changed = []
    for position in _ceil_nodes(model):
        node = model.graph.node[position]
        info = index.info.get(node.input[0])
        if info is None or info.shape is None or any(d < 0 for d in info.shape):
            continue  # no static size to compare: the export meets it again where it needs the shape
        spatial = info.shape[2:]
        nd = len(spatial)
        kernel = list(_attr(node, "kernel_shape", []))
        strides = list(_attr(node, "strides", [1] * nd))
        dilations = list(_attr(node, "dilations", [1] * nd))
        pads = list(_attr(node, "pads", [0] * (2 * nd)))
        dropped, partial = [], []
        for axis, n in enumerate(spatial):
            floor, ceil, run = sizes(n, kernel[axis], strides[axis], dilations[axis], pads[axis],
                                     pads[nd + axis])
            dropped.append(run != ceil)
            partial.append(run != floor)
        if not any(dropped):
            continue
        name = node.name or node.output[0]
        if any(partial):
            raise ModelInputError(
                f"node '{name}' ({node.op_type}, ceil_mode=1): its last window is dropped on one axis and "
                "partial on another, where onnx's shape inference and onnxruntime disagree on its size; "
                "re-export the model with ceil_mode=False and the padding made explicit")
        for a in node.attribute:
            if a.name == "ceil_mode":
                a.i = 0
        changed.append(name)
    return changed
