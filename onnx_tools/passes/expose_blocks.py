"""Pass: expose each block activation as graph output ``sise/act/<i>`` and its per-channel spatial
range (max - min) as ``sise/range/<i>`` [N, C] (original outputs untouched). The range lets the engine
drop constant feature maps (SISE's masks are min-max normalised) without copying activations to the host.

The block tensor is renamed to ``sise/act/<i>`` everywhere in the graph rather than copied through an
Identity node: onnxruntime's EliminateIdentity rewrite can otherwise leave a dangling input when the
tensor also feeds a Pad that another rewrite folds (seen on EfficientNet-Lite0, onnxruntime 1.32).
A block tensor that is itself a graph input or output keeps its name and gets an Identity.
Run this pass last: earlier passes refer to the original names.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..contract import act_output, range_output
from ..gradients import Emitter
from ..gradients.builder import append_emitted
from ..graph import GraphIndex, taken_names


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in every node of the graph."""
    for node in model.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


def expose_blocks(model: onnx.ModelProto, index: GraphIndex, blocks: list[str],
                  batch_dim) -> list[tuple[str, str]]:
    """Make each block tensor a graph output named ``sise/act/<i>`` and add ``sise/range/<i>``;
    returns the (activation, range) output names per block.

    Args:
        batch_dim: the image input's batch dim (int or symbolic name) for the output types.
    """
    interface = {vi.name for vi in model.graph.input} | {vi.name for vi in model.graph.output}
    emit = Emitter(index.opset, "sise/range_ops", taken_names(model))
    names = []
    for i, tensor in enumerate(blocks):
        name = act_output(i)
        if tensor in interface:
            model.graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"sise/act_node/{i}"))
        else:
            rename_tensor(model, tensor, name)
        info = index.info[tensor]
        shape = [batch_dim] + list(info.shape[1:])
        model.graph.output.append(helper.make_tensor_value_info(name, info.elem_type, shape))
        spread = range_output(i)
        high = emit.reduce("ReduceMax", name, [2, 3], keepdims=False)
        low = emit.reduce("ReduceMin", name, [2, 3], keepdims=False)
        emit.op("Sub", [high, low], outputs=[spread])
        model.graph.output.append(helper.make_tensor_value_info(spread, info.elem_type, shape[:2]))
        names.append((name, spread))
    append_emitted(model, emit)
    return names
