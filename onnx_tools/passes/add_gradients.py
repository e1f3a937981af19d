"""Pass: add input ``sise_target`` and outputs ``sise/grad/<i>`` = spatial mean of
d(sum_c target[n, c] * psi_c) / d(block_i), where psi is the score chosen at export."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..contract import TARGET_INPUT, grad_output
from ..gradients import Emitter, attach, build_gradients
from ..graph import GraphIndex, taken_names
from ..scores import emit_score_seed


def _score_seed(emit: Emitter, index: GraphIndex, logits: str, target: str, score: str) -> str:
    """d(loss)/d(logits) for loss = sum(target * psi(logits)), psi over the class axis."""
    dtype = index.dtype(logits)
    rank = index.rank(logits)
    flat = logits if rank == 2 else emit.op("Flatten", [logits], axis=1)
    g = target
    if dtype != np.float32:
        g = emit.op("Cast", [g], to=index.info[logits].elem_type)
    seed = emit_score_seed(emit, flat, g, score, dtype)
    if rank != 2:
        seed = emit.op("Reshape", [seed, emit.op("Shape", [logits])])
    return seed


def add_gradients(model: onnx.ModelProto, index: GraphIndex, *, blocks: list[str], logits: str,
                  num_classes: int, score: str, batch_dim) -> list[str]:
    """Append the backward part to ``model``; returns the gradient output names."""
    emit = Emitter(index.opset, "sise/bw", taken_names(model))
    model.graph.input.append(helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.FLOAT,
                                                           [batch_dim, num_classes]))
    seed = _score_seed(emit, index, logits, TARGET_INPUT, score)
    result = build_gradients(index, emit, output=logits, seed=seed, wrt=blocks)
    names = []
    for i, tensor in enumerate(blocks):
        name = grad_output(i)
        if index.info[tensor].elem_type == onnx.TensorProto.FLOAT:
            emit.reduce("ReduceMean", result.grads[tensor], [2, 3], keepdims=False, output=name)
        else:
            mean = emit.reduce("ReduceMean", result.grads[tensor], [2, 3], keepdims=False)
            emit.op("Cast", [mean], outputs=[name], to=onnx.TensorProto.FLOAT)
        channels = index.info[tensor].shape[1]
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                [batch_dim, channels]))
        names.append(name)
    attach(model, emit, result)
    return names
