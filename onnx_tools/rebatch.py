"""Re-batching: a classifier exported with a fixed batch of 1 (or a batch declared dynamic but written as
1 into a Reshape's target shape) is rewritten to take any batch, so that the engine can score many masks
per run instead of one at a time.

The rewrite is only kept when it is shown safe: the rewritten model, run on a batch of three different
random images, must give each image the outputs the original gives it alone (onnxruntime when installed,
else onnx's reference evaluator). Otherwise the model is left as it is and the reason is returned.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import find_image_input

BATCH = "N"
PROBE_BATCH = 3


@dataclass(frozen=True)
class Rebatch:
    model: onnx.ModelProto
    changed: bool
    note: str  # what was done, or why not


def _first_dim(vi: onnx.ValueInfoProto):
    dims = vi.type.tensor_type.shape.dim
    return dims[0] if len(dims) else None


def _constant_shapes(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    graph = model.graph
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


def _baked_in_ones(model: onnx.ModelProto) -> bool:
    """A Reshape whose constant target shape starts with 1: a batch of one written into the graph."""
    constants = _constant_shapes(model)
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]]).reshape(-1)
            if len(shape) >= 2 and shape[0] == 1:
                return True
    return False


def _free_batch(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, the batch dims written as 1 (graph inputs and outputs; value_info is dropped,
    shape inference makes it again) and Reshape target shapes starting with a literal 1 (made 0: "the
    input's batch", or -1 where allowzero=1). Returns what was changed."""
    graph, changed = model.graph, []
    image = find_image_input(model).name
    for vi in [*graph.input, *graph.output]:
        d = _first_dim(vi)
        if vi.name in {t.name for t in graph.initializer} or d is None:
            continue
        if (d.HasField("dim_value") and d.dim_value == 1) or vi.name == image:
            d.Clear()
            d.dim_param = BATCH
            changed.append(f"{vi.name}[0]")
    del graph.value_info[:]
    constants = _constant_shapes(model)
    shared = {}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64).reshape(-1)
        if len(shape) < 2 or shape[0] != 1:
            continue
        # 0 copies the input's batch; where allowzero=1 makes 0 a literal zero (PyTorch's dynamo exporter
        # writes it), -1 infers it from the other dims, unless one of them is -1 already
        allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        if allowzero and -1 in shape:
            continue
        key = (node.input[1], allowzero)
        if key not in shared:  # a new constant per target shape (others may use the old one)
            fixed = shape.copy()
            fixed[0] = -1 if allowzero else 0
            name = f"{node.input[1]}_rebatched{'_inferred' if allowzero else ''}"
            graph.initializer.append(numpy_helper.from_array(fixed, name))
            if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs too
                graph.input.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [len(fixed)]))
            shared[key] = name
        node.input[1] = shared[key]
        changed.append(f"Reshape '{node.name or node.output[0]}' target {shape.tolist()}")
    return changed


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:  # the export step itself needs only onnx
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _probe_images(model: onnx.ModelProto, batch: int) -> tuple[str, np.ndarray]:
    image = find_image_input(model)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in image.type.tensor_type.shape.dim]
    if any(d is None for d in dims[1:]):
        raise ValueError(f"the image input's dims {dims} are not all known")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)
    rng = np.random.default_rng(0)
    return image.name, rng.standard_normal((batch, *dims[1:])).astype(dtype)


def rebatch(model: onnx.ModelProto) -> Rebatch:
    """The model with a free batch dimension when it has a fixed one (or a baked-in 1) and freeing it is
    shown safe; otherwise the model unchanged, with the reason."""
    image = find_image_input(model)
    first = _first_dim(image)
    try:
        name, probe = _probe_images(model, PROBE_BATCH)
    except ValueError as e:
        return Rebatch(model, False, f"not checked: {e}")
    fixed_one = first is not None and first.HasField("dim_value") and first.dim_value == 1
    if not fixed_one and not _baked_in_ones(model):
        return Rebatch(model, False, "the batch is free already")
    if not fixed_one:  # a batch declared dynamic must really run at a batch of several
        with contextlib.suppress(Exception):  # its failure is what is looked for
            if _equal_per_sample(model, model, name, probe):
                return Rebatch(model, False, "the batch is free already")
    freed = copy.deepcopy(model)
    changed = _free_batch(freed)
    try:
        if _equal_per_sample(model, freed, name, probe):
            return Rebatch(freed, True, "batch freed: " + ", ".join(changed))
        reason = "the outputs at a batch of several differ from those of one image at a time"
    except Exception as e:  # noqa: BLE001 - the rewritten model does not run: keep the original
        reason = f"the model does not run at a batch of several ({type(e).__name__}: {str(e)[:200]})"
    return Rebatch(model, False, f"the batch stays fixed: {reason}")


def _equal_per_sample(original: onnx.ModelProto, candidate: onnx.ModelProto, name: str,
                      probe: np.ndarray) -> bool:
    together = _run(candidate, {name: probe})
    for k in range(len(probe)):
        alone = _run(original, {name: probe[k:k + 1]})
        for a, b in zip(together, alone):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape[:1] != (len(probe),) or not np.allclose(a[k:k + 1], b, rtol=1e-4, atol=1e-5):
                return False
    return True
