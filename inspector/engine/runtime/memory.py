"""The sampler's chunk size from a memory budget: how many masked images one forward pass may take.

The memory a chunk needs grows with the model's activations: onnxruntime keeps a few of the largest
intermediate tensors alive at once (a convolution's input and output, a residual branch, the blocked copies
of its NCHWc layout). ``PER_MASK_FACTOR`` times the largest intermediate tensor of one image is the estimate
per masked image; measured on the CPU provider (benchmarks/memory.py prints estimate and measurement), VGG16
at 224x224 used 5 times its largest tensor per mask and ResNet-50 7 times.
"""

from __future__ import annotations

import logging
import math

import onnx

log = logging.getLogger(__name__)

PER_MASK_FACTOR = 7
MAX_CHUNK = 64  # larger batches make the CPU no faster and only cost memory
DEFAULT_BUDGET_MB = 512  # or a quarter of the memory available, when that is less
CUDA_BUDGET_MB = 4096  # of device memory (not queried)


def _forward_tensors(graph: onnx.GraphProto, output: str) -> set[str]:
    """The tensors the class output is computed from (the forward pass; the export's gradient nodes are
    not among them)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None:
            todo.extend(i for i in node.input if i)
    return seen


def largest_tensor_bytes(proto: onnx.ModelProto, image_shape: tuple, output: str) -> int:
    """Bytes of the largest tensor of one image's forward pass to ``output`` (shapes from ONNX shape
    inference at batch 1; tensors with a dimension it cannot tell are not counted, the image is)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - an estimate: fall back on the input's size below
        inferred = proto
    forward = _forward_tensors(proto.graph, output)
    largest = 4 * math.prod(d for d in image_shape if isinstance(d, int))
    height = max(d for d in image_shape[1:] if isinstance(d, int))
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        if value.name not in forward:
            continue
        t = value.type.tensor_type
        if not t.HasField("shape") or t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        if not dims or any(d is None for d in dims[1:]):
            continue  # the batch may be unknown; a tensor with another unknown dimension is not counted
        itemsize = 2 if t.elem_type == onnx.TensorProto.FLOAT16 else 4
        largest = max(largest, itemsize * math.prod(dims[1:]) if dims[0] in (None, 1) else 0)
    return max(largest, 4 * height * height)


def available_mb() -> int | None:
    """MemAvailable of this machine (Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def default_budget_mb(device: str) -> int:
    if device == "cuda":
        return CUDA_BUDGET_MB
    free = available_mb()
    return DEFAULT_BUDGET_MB if free is None else max(64, min(DEFAULT_BUDGET_MB, free // 4))


def chunk_for_budget(budget_mb: int, per_mask_bytes: int) -> int:
    return max(1, min(MAX_CHUNK, (budget_mb << 20) // max(1, per_mask_bytes)))
