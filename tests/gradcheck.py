"""Finite-difference checks of the generated VJP graphs, one ONNX op at a time.

For loss L(x) = <g, f(x)> with a random upstream gradient g and random direction v, the central
difference (L(x + eps v) - L(x - eps v)) / (2 eps), computed from onnxruntime forward runs, must equal
<VJP(g), v> from the generated backward graph, run on onnxruntime too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_tools.gradients import Emitter, attach, build_gradients
from onnx_tools.graph import GraphIndex, infer_shapes


@dataclass
class OpCase:
    """One op under test.

    Attributes:
        inputs: node input names in order ("" = absent optional input).
        values: arrays for the named inputs.
        wrt: inputs fed as graph inputs and differentiated; every other named input is an initializer.
        eps: finite-difference step (1.0 is exact for linear ops).
        outputs: node output count; several outputs are concatenated on ``concat_axis`` (or only the
            first ``use_outputs`` are) so that one tensor is differentiated.
    """

    id: str
    op: str
    inputs: list[str]
    values: dict[str, np.ndarray]
    wrt: list[str]
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    eps: float = 1e-3
    outputs: int = 1
    use_outputs: int | None = None
    concat_axis: int = 1
    ir_version: int = 8


def forward_model(case: OpCase) -> onnx.ModelProto:
    outs = [f"y{i}" for i in range(case.outputs)]
    nodes = [helper.make_node(case.op, case.inputs, outs, name="op_under_test", **case.attrs)]
    final = "y0"
    if case.outputs > 1:
        used = outs[: case.use_outputs or case.outputs]
        final = "y"
        nodes.append(helper.make_node("Concat", used, [final], axis=case.concat_axis))
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, case.values[n].shape)
              for n in case.wrt]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in case.values.items() if n not in case.wrt]
    probe = helper.make_graph(nodes + [helper.make_node("Identity", [final], ["probe"])], case.id, inputs,
                              [helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, None)], inits)
    probe = helper.make_model(probe, opset_imports=[helper.make_opsetid("", case.opset)])
    probe.ir_version = case.ir_version
    final_info = next(vi for vi in infer_shapes(probe).graph.value_info if vi.name == final)
    graph = helper.make_graph(nodes, case.id, inputs, [final_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = case.ir_version
    return infer_shapes(model)


def backward_model(fwd: onnx.ModelProto, wrt: list[str]) -> onnx.ModelProto:
    """``fwd`` plus input ``g`` (upstream gradient of its output) and outputs ``grad_<x>``."""
    model = copy.deepcopy(fwd)
    index = GraphIndex(model)
    out = model.graph.output[0]
    taken = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
    emit = Emitter(index.opset, "sise/bw", taken)
    result = build_gradients(index, emit, output=out.name, seed="g", wrt=wrt)
    for name in wrt:
        emit.op("Identity", [result.grads[name]], outputs=[f"grad_{name}"])
    attach(model, emit, result)
    model.graph.input.append(helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT,
                                                           index.shape(out.name)))
    model.graph.output.extend(
        helper.make_tensor_value_info(f"grad_{n}", onnx.TensorProto.FLOAT, index.shape(n)) for n in wrt)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check(case: OpCase, *, seed: int = 0, directions: int = 3, rtol: float = 2e-3) -> None:
    rng = np.random.default_rng(seed)
    fwd = forward_model(case)
    bwd = backward_model(fwd, case.wrt)
    f_sess, b_sess = session(fwd), session(bwd)
    feeds = {n: case.values[n].astype(np.float32) for n in case.wrt}
    y = f_sess.run(None, feeds)[0]
    g = rng.standard_normal(y.shape).astype(np.float32)
    grads = b_sess.run([f"grad_{n}" for n in case.wrt], {**feeds, "g": g})
    for name, grad in zip(case.wrt, grads):
        assert grad.shape == feeds[name].shape, (name, grad.shape, feeds[name].shape)
        assert np.all(np.isfinite(grad))
    for _ in range(directions):
        v = {n: rng.standard_normal(feeds[n].shape).astype(np.float32) for n in case.wrt}
        plus = f_sess.run(None, {n: feeds[n] + case.eps * v[n] for n in case.wrt})[0].astype(np.float64)
        minus = f_sess.run(None, {n: feeds[n] - case.eps * v[n] for n in case.wrt})[0].astype(np.float64)
        fd = float(np.sum(g * (plus - minus)) / (2 * case.eps))
        analytic = float(sum(np.sum(grad.astype(np.float64) * v[n]) for n, grad in zip(case.wrt, grads)))
        scale = max(abs(analytic), 1e-2 * sum(float(np.linalg.norm(gr)) * float(np.linalg.norm(v[n]))
                                               for n, gr in zip(case.wrt, grads)) + 1e-12)
        assert abs(fd - analytic) <= rtol * scale, f"{case.id}: fd={fd:.6g} analytic={analytic:.6g}"


# ----- whole models, in float64 -----------------------------------------------------------------------------
def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in double precision: float initializers, Constant tensors, value types and
    Cast targets become DOUBLE (float32 differences through many ReLU kinks only converge at tiny steps)."""
    model = copy.deepcopy(model)
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64),
                                                                  t.name))
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                a.i = onnx.TensorProto.DOUBLE
    return model


def tail_model(model: onnx.ModelProto, start: str, output: str) -> onnx.ModelProto:
    """The part of ``model`` from tensor ``start`` (made a graph input) to ``output``, in float64."""
    import os
    import tempfile

    from onnx.utils import extract_model

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "full.onnx"), os.path.join(tmp, "tail.onnx")
        onnx.save(infer_shapes(model), src)
        extract_model(src, dst, [start], [output])
        return as_float64(onnx.load(dst))


def _spec_ops():
    """Operators whose implementation in onnx's reference evaluator (1.23) departs from the ONNX spec in
    float64, written from the spec: LRN (the evaluator's window differs; onnxruntime follows the spec)
    and Gelu (an erf accurate to the last bit)."""
    import math

    from onnx.reference.op_run import OpRun

    class LRN(OpRun):
        op_domain = ""

        def _run(self, x, alpha=None, beta=None, bias=None, size=None):
            alpha = 1e-4 if alpha is None else alpha
            beta = 0.75 if beta is None else beta
            bias = 1.0 if bias is None else bias
            lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
            squares = x * x
            total = np.zeros_like(x)
            for c in range(x.shape[1]):
                total[:, c] = squares[:, max(0, c - lo):min(x.shape[1], c + hi + 1)].sum(axis=1)
            return (x / (bias + alpha / size * total) ** beta,)

    class Gelu(OpRun):
        op_domain = ""

        def _run(self, x, approximate=None):
            erf = np.vectorize(math.erf)
            return ((0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype),)

    return [LRN, Gelu]


def channel_gradient_fd64(model: onnx.ModelProto, start: str, output: str, activation: np.ndarray,
                          target: int, *, eps: float = 1e-6, directions: int = 4, seed: int = 0):
    """(finite differences, predicted) pairs for the export's per-channel mean gradient ``alpha`` of
    logit ``target`` with respect to block ``start`` at ``activation`` [1, C, h, w]: along a direction
    v constant over each channel's positions, (L(a + eps v) - L(a - eps v)) / 2 eps must equal
    h w <alpha, v>. Returns a function of alpha -> list of (fd, predicted)."""
    from onnx.reference import ReferenceEvaluator

    tail = ReferenceEvaluator(tail_model(model, start, output), new_ops=_spec_ops())
    a = activation.astype(np.float64)
    h, w = a.shape[2:]
    rng = np.random.default_rng(seed)
    fds, vs = [], []
    for _ in range(directions):
        v = rng.standard_normal(a.shape[1])
        step = v[None, :, None, None] * np.ones_like(a)
        up = tail.run(None, {start: a + eps * step})[0].reshape(-1)[target]
        down = tail.run(None, {start: a - eps * step})[0].reshape(-1)[target]
        fds.append((up - down) / (2 * eps))
        vs.append(v)
    return lambda alpha: [(fd, h * w * float(np.dot(alpha, v))) for fd, v in zip(fds, vs)]
