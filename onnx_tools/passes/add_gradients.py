"""Pass: add input ``sise_target`` and outputs ``sise/grad/<i>`` = spatial mean of
d(sum_c target[n, c] * psi_c) / d(block_i), where psi is the score chosen at export; for a detector,
d(sum_{a,c} target[n, a, c] * score[n, a, c]) / d(block_i), score = objectness * class probability of the
canonical head (:mod:`onnx_tools.detection`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..contract import TARGET_INPUT, grad_output
from ..detection import DetectionHead, emit_seed
from ..errors import AlignmentError
from ..gradients import Emitter, attach, build_gradients
from ..graph import GraphIndex, check_aligned, taken_names
from ..scores import emit_score_seed
from .base import ExportState, Pass, PassResult, graph_inputs, graph_outputs, missing, produced


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


class AddGradients(Pass):
    """Append the backward part of the class score ``score`` of output ``logits`` ([N, num_classes]).

    Requires: the block tensors and the class output exist in the model under their original names, the
    class output is a graph output, ``sise_target`` is not yet an input, and the model's nodes line up
    with the batch-1 analysis copy's (the gradient builder reads node positions there).
    Ensures: graph input ``sise_target`` and graph outputs ``sise/grad/<i>``, one per block, exist.
    """

    name = "add_gradients"

    def __init__(self, *, logits: str, num_classes: int, score: str, head: DetectionHead | None = None):
        self.logits = head.scores_tensor if head is not None else logits
        self.num_classes = num_classes
        self.score = score
        self.head = head

    def requires(self, model: onnx.ModelProto, state: ExportState) -> None:
        gone = missing(list(state.blocks) + [self.logits], produced(model))
        if gone:
            raise self.fail("requires", "the block tensors and the class output must exist in the model "
                                        f"under their original names; missing: {', '.join(gone)}")
        if self.head is None and self.logits not in graph_outputs(model):
            raise self.fail("requires", f"the class output '{self.logits}' must be a graph output")
        if TARGET_INPUT in graph_inputs(model):
            raise self.fail("requires", f"the model already has the input '{TARGET_INPUT}' (gradients added "
                                        "twice?)")
        try:
            check_aligned(model, state.index)
        except AlignmentError as e:
            raise self.fail("requires", str(e)) from e

    def ensures(self, model: onnx.ModelProto, state: ExportState) -> None:
        if TARGET_INPUT not in graph_inputs(model):
            raise self.fail("ensures", f"the graph input '{TARGET_INPUT}' is missing")
        names = [grad_output(i) for i in range(len(state.blocks))]
        gone = missing(names, graph_outputs(model) & produced(model))
        if gone:
            raise self.fail("ensures", f"gradient outputs missing or not computed: {', '.join(gone)}")

    def call(self, model: onnx.ModelProto, state: ExportState) -> PassResult:
        index, blocks, batch_dim = state.index, list(state.blocks), state.batch_dim
        emit = Emitter(index.opset, "sise/bw", taken_names(model))
        if self.head is None:
            dims = [batch_dim, self.num_classes]
            seed = _score_seed(emit, index, self.logits, TARGET_INPUT, self.score)
        else:  # a weight per (anchor, class) of the canonical head's scores
            dims = [batch_dim, self.head.num_anchors, self.head.num_classes]
            seed = emit_seed(emit, self.head, TARGET_INPUT)
        model.graph.input.append(helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.FLOAT, dims))
        result = build_gradients(index, emit, output=self.logits, seed=seed, wrt=blocks)
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
        attach(model, emit, result, index)
        return PassResult(model=model, modified=True, outputs=tuple(names))


def add_gradients(model: onnx.ModelProto, index: GraphIndex, *, blocks: list[str], logits: str,
                  num_classes: int, score: str, batch_dim) -> list[str]:
    """Append the backward part to ``model``; returns the gradient output names (:class:`AddGradients`
    with its checks)."""
    state = ExportState(index=index, blocks=tuple(blocks), batch_dim=batch_dim)
    result = AddGradients(logits=logits, num_classes=num_classes, score=score)(model, state)
    return list(result.outputs)
