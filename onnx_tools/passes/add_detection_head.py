"""Pass: add the canonical detection head (:mod:`onnx_tools.detection`) as graph outputs
``sise/det/boxes`` [N, A, 4], ``sise/det/classes`` [N, A, C] and ``sise/det/objectness`` [N, A], computed
from the head tensors of whatever convention the model follows; the original outputs stay as they are."""

from __future__ import annotations

import onnx
from onnx import helper

from ..detection import BOXES, CLASSES, OBJECTNESS, DetectionHead, emit_canonical_head
from ..gradients import Emitter
from ..gradients.builder import append_emitted
from ..graph import taken_names
from .base import ExportState, Pass, PassResult, graph_outputs, missing, produced


class AddDetectionHead(Pass):
    """Requires: the head's tensors exist in the model under their original names, and the canonical
    outputs do not exist yet. Ensures: the three canonical outputs are graph outputs and are computed."""

    name = "add_detection_head"

    def __init__(self, head: DetectionHead):
        self.head = head

    def requires(self, model: onnx.ModelProto, state: ExportState) -> None:
        gone = missing(list(self.head.tensors), produced(model))
        if gone:
            raise self.fail("requires", f"the detection head's tensors must exist in the model: missing "
                                        f"{', '.join(gone)}")
        there = [n for n in (BOXES, CLASSES, OBJECTNESS) if n in graph_outputs(model)]
        if there:
            raise self.fail("requires", f"the model already has {', '.join(there)} (the head added twice?)")

    def ensures(self, model: onnx.ModelProto, state: ExportState) -> None:
        gone = missing([BOXES, CLASSES, OBJECTNESS], graph_outputs(model) & produced(model))
        if gone:
            raise self.fail("ensures", f"canonical head outputs missing or not computed: {', '.join(gone)}")

    def call(self, model: onnx.ModelProto, state: ExportState) -> PassResult:
        emit = Emitter(state.index.opset, "sise/det", taken_names(model))
        boxes, classes, objectness = emit_canonical_head(emit, self.head)
        n, a, c = state.batch_dim, self.head.num_anchors, self.head.num_classes
        for source, name, dims in ((boxes, BOXES, [n, a, 4]), (classes, CLASSES, [n, a, c]),
                                   (objectness, OBJECTNESS, [n, a])):
            emit.op("Identity", [source], outputs=[name])
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
        append_emitted(model, emit)
        return PassResult(model=model, modified=True, outputs=(BOXES, CLASSES, OBJECTNESS))
