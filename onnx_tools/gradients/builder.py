"""Reverse-mode differentiation of an ONNX graph, written as new ONNX nodes.

The walk visits the nodes between the requested tensors and the output in reverse topological order,
accumulating one gradient per tensor (a Sum where a tensor feeds several consumers: residual
branches). Constant and shape subgraphs are never on the path, so they carry no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import UnsupportedOpError
from ..graph import GraphIndex, check_aligned
from . import ops  # noqa: F401  (registers the VJP builders)
from .emitter import Emitter
from .registry import UnsupportedVariant, VjpContext, lookup


@dataclass
class Gradients:
    """Result of :func:`build_gradients`.

    Attributes:
        grads: requested tensor -> name of its gradient tensor (same shape).
        extra_outputs: (node position, output slot, name) forward outputs the backward part reads and
            that the forward graph must start producing (MaxPool Indices); positions are in the index
            the gradients were built from (see :func:`attach`).
    """

    grads: dict[str, str]
    extra_outputs: list


def attach(model: onnx.ModelProto, emit: Emitter, result: Gradients, index: GraphIndex | None = None) -> None:
    """Append what ``emit`` collected to ``model`` and make the forward nodes produce the extra outputs
    the backward part reads. Before IR version 4 new initializers are also declared as graph inputs.

    The extra outputs' positions are positions in the index the gradients were built from; when that is
    another model's (the export's batch-1 analysis copy), pass it as ``index``: it is checked that
    ``model`` has the same nodes there (:func:`~onnx_tools.graph.check_aligned`).
    """
    if index is not None and index.model is not model:
        check_aligned(model, index, sorted({position for position, _, _ in result.extra_outputs}))
    for position, slot, name in result.extra_outputs:
        outputs = model.graph.node[position].output
        while len(outputs) <= slot:
            outputs.append("")
        outputs[slot] = name
    append_emitted(model, emit)


def append_emitted(model: onnx.ModelProto, emit: Emitter) -> None:
    """Append the nodes and initializers ``emit`` collected (declared as graph inputs too before IR 4)."""
    model.graph.node.extend(emit.nodes)
    model.graph.initializer.extend(emit.initializers)
    if model.ir_version < 4:
        model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in emit.initializers)


def gradient_path(index: GraphIndex, wrt: list[str], output: str) -> tuple[set[str], list[int]]:
    """Tensors on a differentiable path from ``wrt`` to ``output``, and the positions of the nodes to
    differentiate (some input and some output on that path)."""
    on_path = index.reach_forward(wrt) & index.reach_backward([output])
    positions = [p for p, node in enumerate(index.nodes)
                 if any(o in on_path for o in node.output) and any(i in on_path for i in node.input)]
    return on_path, positions


def unsupported_nodes(index: GraphIndex, positions: list[int]) -> list[onnx.NodeProto]:
    return [index.nodes[p] for p in positions if lookup(index.nodes[p]) is None]


def describe(node: onnx.NodeProto, opset: int) -> str:
    domain = f"{node.domain}." if node.domain else ""
    return f"node '{node.name or node.output[0]}' ({domain}{node.op_type}, opset {opset})"


WAY_OUT = (". Blocks after these nodes need no gradient through them: name such block tensors with "
           "--blocks T1,T2,... (`python -m onnx_tools inspect MODEL` lists the candidates)")
NO_WAY_OUT = ("; no block can be named after {nodes}: no [N, C, h, w] tensor with h * w > 1 follows it on "
              "the way to the class output, so every block's gradient passes through it (export the model "
              "without that layer, or ask for its gradient builder)")


def way_out(index: GraphIndex, nodes: list[onnx.NodeProto], output: str) -> str:
    """WAY_OUT, or NO_WAY_OUT naming the nodes after which no block tensor exists."""
    to_output = index.reach_backward([output])
    stuck = []
    for node in nodes:
        after = index.reach_forward([o for o in node.output if o]) & to_output
        shapes = [index.info[t].shape for t in after if t in index.info and index.info[t].shape is not None]
        if not any(len(shape) == 4 and shape[2] * shape[3] > 1 for shape in shapes):
            stuck.append(f"'{node.name or node.output[0]}'")
    return NO_WAY_OUT.format(nodes=", ".join(stuck)) if stuck else WAY_OUT


def build_gradients(index: GraphIndex, emit: Emitter, *, output: str, seed: str, wrt: list[str]) -> Gradients:
    """Emit nodes computing d(loss)/d(t) for every t in ``wrt``, where d(loss)/d(output) = ``seed``.

    Raises:
        UnsupportedOpError: listing every node on the path without a builder or with an unsupported variant.
    """
    on_path, positions = gradient_path(index, wrt, output)
    missing = unsupported_nodes(index, positions)
    if missing:
        lines = [describe(n, index.opset) for n in missing]
        kinds = sorted({n.op_type for n in missing})
        raise UnsupportedOpError(f"{len(missing)} node(s) on the gradient path have no gradient builder "
                                 f"(op types {', '.join(kinds)}): " + "; ".join(lines)
                                 + way_out(index, missing, output))
    pending: dict[str, list[str]] = {output: [seed]}
    total: dict[str, str] = {}

    def gradient_of(name: str) -> str | None:
        if name not in total:
            parts = pending.get(name)
            if not parts:
                return None
            total[name] = parts[0] if len(parts) == 1 else emit.op("Sum", parts, hint="acc")
        return total[name]

    problems, refused, extra = [], [], []
    for p in reversed(positions):
        node = index.nodes[p]
        grads_out = [gradient_of(o) for o in node.output]
        if all(g is None for g in grads_out):
            continue
        ctx = VjpContext(node=node, position=p, index=index, emit=emit, grads_out=grads_out,
                         needs=[i in on_path for i in node.input])
        try:
            grads_in = lookup(node)(ctx)
        except UnsupportedVariant as e:
            problems.append(f"{describe(node, index.opset)}: {e}")
            refused.append(node)
            continue
        extra.extend(ctx.extra_outputs)
        for name, g in zip(node.input, grads_in):
            if g is not None and name in on_path:
                pending.setdefault(name, []).append(g)
    if problems:
        raise UnsupportedOpError(f"{len(problems)} node(s) on the gradient path use unsupported variants: "
                                 + "; ".join(problems) + way_out(index, refused, output))
    grads = {}
    for name in wrt:
        g = gradient_of(name)
        if g is None:
            raise UnsupportedOpError(f"tensor '{name}' does not influence the output '{output}'")
        grads[name] = g
    return Gradients(grads=grads, extra_outputs=extra)
