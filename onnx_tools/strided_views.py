"""``torch.as_strided`` as PyTorch's dynamo exporter writes a contiguous view (ConvNeXt's adaptive average
pool ends in one): the tensor flattened (rank 1), then ``Gather(axis=0)`` of constant indices that count
its elements in order, shaped like the view, with the batch of 1 the model was traced with written into
them.

Where the indices are exactly ``0, 1, ..., K - 1`` and the flattened tensor holds K elements for one
image, that Gather is a Reshape to the indices' shape. It is written as one, with the batch axis as -1 (a
leading 1 in the indices is the traced batch), at the same node position: the gradient builder
differentiates a Reshape (a Gather along axis 0 looks like one along the batch and is refused), and the
batch can be freed (:mod:`onnx_tools.rebatch` checks it).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import find_image_input, infer_shapes, taken_names


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return {name: numpy_helper.to_array(t) for name, t in found.items()
            if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}


def _candidates(model: onnx.ModelProto) -> list[tuple[int, np.ndarray]]:
    """(position, indices) of the Gathers along axis 0 whose constant indices count 0..K-1 in order."""
    constants = _constants(model)
    found = []
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[1] not in constants:
            continue
        if next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            continue
        indices = constants[node.input[1]]
        if indices.ndim >= 1 and np.array_equal(indices.reshape(-1), np.arange(indices.size)):
            found.append((position, indices))
    return found


def as_reshapes(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, each such Gather of a rank-1 tensor holding exactly its indices' count of
    elements for one image as a Reshape; returns the rewritten nodes' names."""
    candidates = _candidates(model)
    if not candidates:
        return []
    probe = copy.deepcopy(model)  # shapes for one image
    first = find_image_input(probe).type.tensor_type.shape.dim[0]
    if not first.HasField("dim_value"):
        first.Clear()
        first.dim_value = 1
    shapes = {}
    for vi in [*infer_shapes(probe).graph.value_info, *probe.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    taken, changed = taken_names(model), []
    for position, indices in candidates:
        node = model.graph.node[position]
        data = shapes.get(node.input[0])
        if data is None or len(data) != 1 or data[0] != indices.size:
            continue
        target = [-1, *indices.shape[1:]] if indices.shape[0] == 1 else list(indices.shape)
        name = f"{node.input[1]}_as_shape"
        while name in taken:
            name += "_"
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(target, np.int64), name))
        if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs too
            model.graph.input.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [len(target)]))
        reshape = helper.make_node("Reshape", [node.input[0], name], list(node.output), name=node.name)
        changed.append(node.name or node.output[0])
        model.graph.node[position].CopyFrom(reshape)
    return changed
