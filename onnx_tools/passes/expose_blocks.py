"""Pass: expose each block activation as graph output ``sise/act/<i>`` and its per-channel spatial
range (max - min) as ``sise/range/<i>`` [N, C] (original outputs untouched). The range lets the engine
drop constant feature maps (SISE's masks are min-max normalised) without copying activations to the host.

The block tensor is renamed to ``sise/act/<i>`` everywhere in the graph rather than copied through an
Identity node: onnxruntime's EliminateIdentity rewrite can otherwise leave a dangling input when the
tensor also feeds a Pad that another rewrite folds (seen on EfficientNet-Lite0, onnxruntime 1.32).
A block tensor that is itself a graph input or output keeps its name and gets an Identity.
Because earlier passes refer to the original names, :class:`ExposeBlocks` requires the gradient outputs
to exist already: it runs after :class:`~onnx_tools.passes.add_gradients.AddGradients`.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..contract import act_output, grad_output, range_output
from ..gradients import Emitter
from ..gradients.builder import append_emitted
from ..graph import GraphIndex, taken_names
from .base import ExportState, Pass, PassResult, graph_inputs, graph_outputs, missing, produced


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in every node of the graph."""
    for node in model.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


class ExposeBlocks(Pass):
    """Make each block tensor a graph output named ``sise/act/<i>`` and add ``sise/range/<i>``.

    Requires: the block tensors exist under their original names, and the gradient outputs
    ``sise/grad/<i>`` exist already (this pass renames the block tensors, so every pass that refers to
    them runs before it).
    Ensures: graph outputs ``sise/act/<i>`` and ``sise/range/<i>`` exist and are computed, and no node
    still uses a renamed block tensor's original name.
    """

    name = "expose_blocks"

    def requires(self, model: onnx.ModelProto, state: ExportState) -> None:
        gone = missing(state.blocks, produced(model))
        if gone:
            raise self.fail("requires", "the block tensors must exist in the model under their original "
                                        f"names; missing: {', '.join(gone)}")
        grads = [grad_output(i) for i in range(len(state.blocks))]
        gone = missing(grads, graph_outputs(model))
        if gone:
            raise self.fail("requires", f"the gradient outputs must exist already (missing: "
                                        f"{', '.join(gone)}): this pass renames the block tensors, so it "
                                        "runs after add_gradients")

    def ensures(self, model: onnx.ModelProto, state: ExportState) -> None:
        names = [f(i) for i in range(len(state.blocks)) for f in (act_output, range_output)]
        gone = missing(names, graph_outputs(model) & produced(model))
        if gone:
            raise self.fail("ensures", f"block outputs missing or not computed: {', '.join(gone)}")
        interface = graph_inputs(model) | graph_outputs(model)
        used = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
        stale = [t for t in state.blocks if t not in interface and t in used]
        if stale:
            raise self.fail("ensures", f"nodes still use the renamed block tensors {', '.join(stale)}")

    def call(self, model: onnx.ModelProto, state: ExportState) -> PassResult:
        index, batch_dim = state.index, state.batch_dim
        interface = graph_inputs(model) | graph_outputs(model)
        emit = Emitter(index.opset, "sise/range_ops", taken_names(model))
        names = []
        for i, tensor in enumerate(state.blocks):
            name = act_output(i)
            if tensor in interface:
                model.graph.node.append(helper.make_node("Identity", [tensor], [name],
                                                         name=f"sise/act_node/{i}"))
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
            names += [name, spread]
        append_emitted(model, emit)
        return PassResult(model=model, modified=bool(names), outputs=tuple(names))


def expose_blocks(model: onnx.ModelProto, index: GraphIndex, blocks: list[str],
                  batch_dim) -> list[tuple[str, str]]:
    """Make each block tensor a graph output named ``sise/act/<i>`` and add ``sise/range/<i>``;
    returns the (activation, range) output names per block (:class:`ExposeBlocks` with its checks).

    Args:
        batch_dim: the image input's batch dim (int or symbolic name) for the output types.
    """
    state = ExportState(index=index, blocks=tuple(blocks), batch_dim=batch_dim)
    outputs = ExposeBlocks()(model, state).outputs
    return list(zip(outputs[0::2], outputs[1::2]))
