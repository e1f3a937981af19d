"""Loading a model and indexing its graph: producers, consumers, static shapes, constants, reachability.

Everything downstream (block discovery, the gradient builder, the passes) reads the graph through
:class:`GraphIndex`, built once from a shape-inferred copy of the model with batch 1.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import AlignmentError, ModelInputError, ModelLoadError

log = logging.getLogger(__name__)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
# Ops whose outputs describe shapes, not values: no gradient flows through them.
SHAPE_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "EyeLike", "ConstantOfShape", "RandomNormalLike",
             "RandomUniformLike", "RandomNormal", "RandomUniform", "Range"}


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read ``path`` as an ONNX model (with its external data, see :mod:`onnx_tools.external_data`),
    refusing what the export step cannot handle.

    Raises:
        ModelLoadError: missing, empty, unparsable or truncated file, or external data that is missing,
            truncated or outside the model's folder.
    """
    return read_model(path)[0]


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, list[str]]:
    """:func:`load_model`, and the external data files the model kept its weights in (absolute paths)."""
    from . import external_data

    path = os.fspath(path)
    if not os.path.isfile(path):  # a FIFO or device is never opened: reading it could block or never end
        raise ModelLoadError(f"{path}: not a regular file (a folder, device, FIFO or socket); give the model "
                             "file" if os.path.exists(path) else f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ModelLoadError(f"{path}: the file is empty, not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError / RuntimeWarning-like errors of several types
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); "
                             "check that the file is complete") from e
    if not model.graph.node or not model.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph nodes or opset); "
                             "check that the file is complete")
    files = external_data.data_files(model, path)  # each tensor's file and bytes, before the checker's words
    split = bool(files)
    try:  # a split model is checked from its file (its data is found from there, and may pass 2 GB)
        onnx.checker.check_model(path if split else model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ModelLoadError(f"{path}: invalid ONNX model ({first}); check that the file is complete") from e
    external_data.load_into(model, path)
    return model, files


# The names of ONNX's default operator domain; its opset is "the model's opset" everywhere in onnx_tools.
DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return imp.version
    raise ModelLoadError("the model imports no default-domain (ai.onnx) opset")


def taken_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name the graph already uses (node inputs and outputs, initializers, graph inputs and
    outputs): what an :class:`~onnx_tools.gradients.Emitter` adding nodes to it must never reuse."""
    graph = model.graph
    names = {n for node in graph.node for n in list(node.input) + list(node.output)}
    names |= {t.name for t in graph.initializer}
    names |= {vi.name for vi in list(graph.input) + list(graph.output)}
    names.discard("")
    return names


def dims_of(value_info: onnx.ValueInfoProto) -> list:
    """Dims of a tensor type: ints for static dims, strings (or None) for dynamic ones (a ``dim_value``
    of -1 or 0 is a converter's way of writing "unknown", see :func:`unknown_dims_as_symbols`)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or None)
    return out


def unknown_dims_as_symbols(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, dims written as ``dim_value`` -1 or 0 on the graph's inputs, outputs and
    value_info (PaddlePaddle and some converters write a dynamic dimension so; no classifier tensor has
    a real zero-size dimension) as named dims: ``N`` for the batch axis of inputs and outputs, otherwise
    ``unknown_<k>``. Returns ``tensor[axis]`` for each rewritten dim."""
    graph, changed = model.graph, []
    taken = {d.dim_param for vi in [*graph.input, *graph.output, *graph.value_info]
             for d in vi.type.tensor_type.shape.dim if d.dim_param}
    batch = "N" if "N" not in taken else "N_batch"
    boundary = {vi.name for vi in [*graph.input, *graph.output]}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = batch if axis == 0 and vi.name in boundary else f"unknown_{len(changed)}"
                changed.append(f"{vi.name}[{axis}]")
    return changed


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape inference with data propagation; errors name what failed."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        raise ModelLoadError(f"shape inference failed: {e}") from e


@dataclass(frozen=True)
class TensorInfo:
    elem_type: int
    shape: tuple | None  # ints for static dims; None when the rank is unknown

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


class GraphIndex:
    """Read-only index over a shape-inferred model (batch fixed to 1 for analysis).

    Attributes:
        nodes: graph nodes in the model's (topological) order.
        producer: tensor name -> index of the node producing it.
        consumers: tensor name -> indices of nodes reading it.
        info: tensor name -> TensorInfo (elem type and static shape) where known.
        constants: names of initializers and Constant-node outputs.
        opset: the default-domain opset version.
    """

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.opset = default_opset(model)
        self.nodes = list(graph.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = i
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = set(self.initializers)
        for node in self.nodes:
            if node.op_type == "Constant":
                self.constants.update(node.output)
        self.info: dict[str, TensorInfo] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            t = vi.type.tensor_type
            shape = tuple(dims_of(vi)) if t.HasField("shape") else None
            if shape is not None and any(not isinstance(d, int) for d in shape):
                shape = tuple(d if isinstance(d, int) else -1 for d in shape)
            self.info[vi.name] = TensorInfo(t.elem_type, shape)
        for name, init in self.initializers.items():
            self.info[name] = TensorInfo(init.data_type, tuple(init.dims))
        self.graph_inputs = [vi.name for vi in graph.input if vi.name not in self.initializers]
        self.graph_outputs = [vi.name for vi in graph.output]

    # ----- static facts -------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of ``name``; raises when it is unknown or dynamic."""
        info = self.info.get(name)
        if info is None or info.shape is None or any(d < 0 for d in info.shape):
            raise ModelLoadError(f"tensor '{name}' has no static shape after shape inference; "
                                 "fix the input shape with --input-shape")
        return info.shape

    def rank(self, name: str) -> int | None:
        info = self.info.get(name)
        return None if info is None or info.shape is None else len(info.shape)

    def dtype(self, name: str) -> np.dtype:
        return self.info[name].np_dtype

    def const_value(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None."""
        if not name:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        idx = self.producer.get(name)
        if idx is not None and self.nodes[idx].op_type == "Constant":
            node = self.nodes[idx]
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.array(onnx.helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.array(onnx.helper.get_attribute_value(a))
        return None

    def differentiable(self, name: str) -> bool:
        """True for tensors that carry values (not shapes, not constants): float tensors, and the integer
        output of a QuantizeLinear (a QDQ model's quantized activations: straight-through)."""
        if not name or name in self.constants:
            return False
        info = self.info.get(name)
        idx = self.producer.get(name)
        if info is not None and idx is not None and self.nodes[idx].op_type == "QuantizeLinear":
            return True
        if info is None or not info.is_float:
            return False
        return idx is None or self.nodes[idx].op_type not in SHAPE_OPS

    # ----- reachability over differentiable tensors ----------------------------------------------
    def reach_forward(self, sources: list[str]) -> set[str]:
        """Differentiable tensors that depend on any of ``sources`` (sources included)."""
        seen = {s for s in sources if s}
        for node in self.nodes:  # nodes are topologically ordered
            if any(i in seen for i in node.input):
                seen.update(o for o in node.output if self.differentiable(o))
        return seen

    def reach_backward(self, sinks: list[str]) -> set[str]:
        """Differentiable tensors that ``sinks`` depend on (sinks included)."""
        seen = set(sinks)
        for node in reversed(self.nodes):
            if any(o in seen for o in node.output):
                seen.update(i for i in node.input if self.differentiable(i))
        return seen

    def topo_position(self) -> dict[str, int]:
        """Tensor -> position in a topological order (graph inputs first)."""
        pos = {name: i for i, name in enumerate(self.graph_inputs)}
        for node in self.nodes:
            for o in node.output:
                if o:
                    pos[o] = len(pos)
        return pos


def check_topological(model: onnx.ModelProto) -> None:
    """Raise when a node reads a tensor produced later (ONNX requires topological order)."""
    known = {vi.name for vi in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        for name in node.input:
            if name and name not in known:
                raise ModelLoadError(f"node '{node.name}' ({node.op_type}) reads '{name}' "
                                     "before it is produced; the graph is not topologically sorted")
        known.update(node.output)


def find_image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single rank-4 float graph input (the image). Raises when there is none or several."""
    inits = {t.name for t in model.graph.initializer}
    candidates = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        if t.elem_type in FLOAT_TYPES and t.HasField("shape") and len(t.shape.dim) == 4:
            candidates.append(vi)
    if not candidates:
        names = [vi.name for vi in model.graph.input if vi.name not in inits]
        raise ModelInputError(f"no image-like input (rank-4 float tensor) among the model inputs {names}")
    if len(candidates) > 1:
        names = ", ".join(f"'{vi.name}' {dims_of(vi)}" for vi in candidates)
        raise ModelInputError(f"the model has more than one image-like input ({names}); "
                              "SISE explains single-image classifiers: export a model with one image input")
    return candidates[0]


NONDETERMINISTIC_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "Multinomial", "Bernoulli"}


@functools.cache
def _dequantize_linear():
    """DequantizeLinear for folding: onnx's reference implementation has it from opset 19 only, and the
    weights of a weight-quantized model are DequantizeLinear of constants at any opset."""
    from onnx.reference.op_run import OpRun

    class DequantizeLinear(OpRun):
        op_domain = ""

        def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):
            if block_size or not np.issubdtype(x.dtype, np.integer):
                raise NotImplementedError("blocked or float8 dequantization is not folded")
            shape = [1] * x.ndim
            if np.ndim(x_scale) == 1 and x.ndim:
                shape[(1 if axis is None else axis) % x.ndim] = -1
            scale = np.asarray(x_scale)
            zero = np.zeros((), np.int64) if x_zero_point is None else np.asarray(x_zero_point, np.int64)
            shifted = x.astype(np.int64) - zero.reshape(shape if zero.ndim == 1 else ())
            return (shifted.astype(scale.dtype) * scale.reshape(shape if scale.ndim == 1 else ()),)

    return DequantizeLinear


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-infer ``model`` and replace, in place, every single-output node computable without the
    graph inputs (constants, and Shape of statically shaped tensors) by a Constant node.

    Folding runs in rounds until nothing is left to fold: a shape folded in one round can make the next
    tensor's shape static. A network of repeated units whose shapes each come from the one before (a
    ShuffleNet's channel split reads ``Shape`` of the previous unit's output, and a re-batched Reshape
    target ``[0, C, H, W]`` copies its batch from an input whose shape is only known once the previous
    split is folded) needs one round per unit.

    Exporters compute pads, shapes and axes with small integer subgraphs (torch's F.pad builds its
    pads with ConstantOfShape/Concat/Slice/Transpose); folding them makes the downstream shapes and
    these values static. Node positions are unchanged (a folded node becomes a Constant with the same
    output in the same place), so the copy stays aligned with the original: :func:`check_aligned`.
    """
    from onnx.reference import ReferenceEvaluator

    def evaluator(model: onnx.ModelProto):
        return ReferenceEvaluator(model, new_ops=[_dequantize_linear()])

    unfoldable: set[str] = set()  # outputs of nodes onnx's reference implementation cannot evaluate
    for _ in range(len(model.graph.node) + 1):  # each round folds at least one node or returns
        model = infer_shapes(model)
        index = GraphIndex(model)
        known = set(index.constants)
        fold: list[int] = []
        shape_values: dict[int, np.ndarray] = {}
        for p, node in enumerate(index.nodes):
            if node.op_type == "Constant" or len(node.output) != 1 or node.domain not in DEFAULT_DOMAINS:
                continue
            if node.op_type in NONDETERMINISTIC_OPS or node.output[0] in unfoldable:
                continue
            if node.op_type == "Shape":
                info = index.info.get(node.input[0])
                if info is None or info.shape is None or any(d < 0 for d in info.shape):
                    continue
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), None)
                shape_values[p] = np.array(info.shape[start:end], dtype=np.int64)
            elif not node.input or not all(not i or i in known for i in node.input):
                continue
            fold.append(p)
            known.add(node.output[0])
        if not fold:
            return model
        try:
            values = _evaluate(index, fold, shape_values, evaluator)
        except ModelLoadError:  # fold what can be folded; the rest stays computed at run time
            values = _evaluate_each(index, fold, shape_values, evaluator)
            left = [p for p in fold if index.nodes[p].output[0] not in values]
            unfoldable.update(index.nodes[p].output[0] for p in left)
            fold = [p for p in fold if p not in left]
            if not fold:
                return infer_shapes(model)
        for p in fold:
            out = index.nodes[p].output[0]
            const = helper_constant(out, values[out], name=index.nodes[p].name)
            model.graph.node[p].CopyFrom(const)
    return infer_shapes(model)


def check_aligned(model: onnx.ModelProto, index: GraphIndex, positions: list[int] | None = None) -> None:
    """Raise :class:`AlignmentError` unless ``model``'s nodes line up with ``index``'s nodes (the batch-1
    analysis copy) at ``positions`` (default: all, and the node counts must match too).

    The gradient builder finds nodes by their position in the copy and writes extra outputs (MaxPool
    Indices) into ``model`` at those positions. Aligned means: the same outputs, and the same op type
    unless :func:`fold_constants` replaced the node by a Constant in the copy.
    """
    nodes, copied = model.graph.node, index.nodes
    broken = "node positions read in the batch-1 analysis copy do not hold in the model"
    if positions is None:
        if len(nodes) != len(copied):
            raise AlignmentError(f"internal error: the analysis copy has {len(copied)} nodes but the model "
                                 f"has {len(nodes)}: {broken}; please report it")
        positions = range(len(copied))
    for p in positions:
        if not 0 <= p < min(len(nodes), len(copied)):
            raise AlignmentError(f"internal error: node position {p} is outside the model ({len(nodes)} "
                                 f"nodes) or its analysis copy ({len(copied)}): {broken}; please report it")
        have, want = nodes[p], copied[p]
        same_op = have.op_type == want.op_type or want.op_type == "Constant"  # folded in the copy
        if list(have.output) != list(want.output) or not same_op:
            raise AlignmentError(f"internal error: node {p} is {have.op_type} -> {list(have.output)} in the "
                                 f"model but {want.op_type} -> {list(want.output)} in the analysis copy: "
                                 f"{broken}; please report it")


def helper_constant(output: str, value: np.ndarray, name: str = "") -> onnx.NodeProto:
    return onnx.helper.make_node("Constant", [], [output], name=name,
                                 value=numpy_helper.from_array(np.asarray(value)))


def _evaluate(index: GraphIndex, fold: list[int], shape_values: dict, evaluator_cls) -> dict[str, np.ndarray]:
    """Evaluate the folded nodes with onnx's reference implementation (constants only, no image)."""
    nodes = []
    for p, node in enumerate(index.nodes):
        if p in shape_values:
            nodes.append(helper_constant(node.output[0], shape_values[p]))
        elif node.op_type == "Constant" or p in fold:
            nodes.append(node)
    outputs = [index.nodes[p].output[0] for p in fold]
    used = {i for n in nodes for i in n.input}
    inits = [t for name, t in index.initializers.items() if name in used]
    graph = onnx.helper.make_graph(nodes, "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None)
                                                       for o in outputs], inits)
    model = onnx.helper.make_model(graph, opset_imports=list(index.model.opset_import))
    try:
        results = evaluator_cls(model).run(None, {})
    except Exception as e:
        raise ModelLoadError(f"could not evaluate the model's constant subgraphs ({e})") from e
    return dict(zip(outputs, results))


def _evaluate_each(index: GraphIndex, fold: list[int], shape_values: dict,
                   evaluator_cls) -> dict[str, np.ndarray]:
    """:func:`_evaluate` node by node, leaving out the nodes it cannot evaluate (an op onnx's reference
    implementation lacks at the model's opset: DequantizeLinear before opset 19) and those after them."""
    values: dict[str, np.ndarray] = {}
    for p in fold:
        node = index.nodes[p]
        if p in shape_values:
            values[node.output[0]] = shape_values[p]
            continue
        inputs = [i for i in node.input if i]
        if not all(i in values or i in index.initializers or _is_constant_node(index, i) for i in inputs):
            continue  # after a node that could not be evaluated
        feeding = [helper_constant(i, values[i]) if i in values else index.nodes[index.producer[i]]
                   for i in dict.fromkeys(inputs) if i not in index.initializers]
        graph = onnx.helper.make_graph(feeding + [node], "fold_one", [],
                                       [onnx.helper.make_tensor_value_info(node.output[0], 0, None)],
                                       [index.initializers[i] for i in dict.fromkeys(inputs)
                                        if i in index.initializers])
        try:
            single = onnx.helper.make_model(graph, opset_imports=list(index.model.opset_import))
            values[node.output[0]] = evaluator_cls(single).run(None, {})[0]
        except Exception as e:  # noqa: BLE001 - any failure of the reference implementation: leave it unfolded
            log.debug("constant node '%s' (%s) left unfolded: %s", node.name, node.op_type, e)
    return values


def _is_constant_node(index: GraphIndex, name: str) -> bool:
    producer = index.producer.get(name)
    return producer is not None and index.nodes[producer].op_type == "Constant"
