"""Pass: expose each block activation as graph output ``sise/act/<i>`` (originals untouched)."""

from __future__ import annotations

import onnx
from onnx import helper

from ..contract import act_output
from ..graph import GraphIndex


def expose_blocks(model: onnx.ModelProto, index: GraphIndex, blocks: list[str], batch_dim) -> list[str]:
    """Append one Identity node and graph output per block; returns the output names.

    Args:
        batch_dim: the image input's batch dim (int or symbolic name) for the output types.
    """
    names = []
    for i, tensor in enumerate(blocks):
        name = act_output(i)
        model.graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"sise/act_node/{i}"))
        info = index.info[tensor]
        shape = [batch_dim] + list(info.shape[1:])
        model.graph.output.append(helper.make_tensor_value_info(name, info.elem_type, shape))
        names.append(name)
    return names
