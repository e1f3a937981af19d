"""The export step on detectors (``--task detect``): each head convention read as the canonical head
(checked against a numpy decoding of the model's own raw output), the detection-target gradients
against torch autograd on the same weights, sigmoids found in the graph or applied, NMS inside the graph
bypassed, and what is refused (two-stage detectors, end-to-end heads, unknown heads) named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")

from onnx_tools import export_model
from onnx_tools.errors import ModelInputError

from .conftest import rel_err, run_model
from .detectors import (
    SPLIT_KINDS,
    TAPS,
    decode,
    detector,
    export_detector,
    split_canonical,
    torch_detection_gradients,
)

SIZE = 64
TOL = 1e-4


def exported(convention: str, sigmoid: bool = True, **options):
    model = detector(convention, sigmoid)
    head = "yolox" if convention == "yolox" else "auto"
    return model, export_model(export_detector(model, SIZE), task="detect", head=head, **options)


def feeds(contract, rng, batch: int = 2):
    x = rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    target = np.zeros((batch, contract.head.num_anchors, contract.head.num_classes), np.float32)
    target[0, 17, 1] = 1.0  # one detection: anchor 17, class 1
    if batch > 1:
        target[1] = rng.uniform(-1, 1, target.shape[1:])  # any weights over (anchor, class)
    return x, target


@pytest.mark.parametrize("convention", ["yolov8", "yolov5", "yolox"])
@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid-inside", "logits"])
def test_each_convention_gives_the_canonical_head_and_the_detection_gradients(convention, sigmoid):
    model, result = exported(convention, sigmoid)
    c = result.contract
    assert c.task == "detect" and c.head.convention == convention and c.head.logits == (not sigmoid)
    assert (c.head.num_anchors, c.head.num_classes) == (64 + 16 + 4, 3)
    assert len(c.blocks) == len(TAPS)  # the backbone up to the last tensor all branches read
    x, target = feeds(c, np.random.default_rng(0))
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    boxes, classes, objectness = decode(outs["output0"], convention, not sigmoid, SIZE)
    assert rel_err(outs["sise/det/boxes"], boxes) <= 1e-6
    assert rel_err(outs["sise/det/classes"], classes) <= 1e-6
    assert rel_err(outs["sise/det/objectness"], objectness) <= 1e-6
    acts, grads = torch_detection_gradients(model, x, target)
    for block, act, grad in zip(c.blocks, acts, grads):
        assert rel_err(outs[block.act_output], act) <= TOL
        err = rel_err(outs[block.grad_output], grad)
        assert err <= TOL, f"{convention} block {block.index}: gradient rel. error {err:.2e}"


def test_the_original_outputs_stay_bit_identical():
    model = detector("yolov5")
    original = export_detector(model, SIZE)
    result = export_model(original, task="detect")
    c = result.contract
    x, target = feeds(c, np.random.default_rng(1))
    before = run_model(original, {c.input_name: x}, optimize=False)["output0"]
    after = run_model(result.model, {c.input_name: x, c.target_input: target}, optimize=False)["output0"]
    assert np.array_equal(before, after)


def with_nms(model: onnx.ModelProto, encoding: str) -> onnx.ModelProto:
    """The yolov8 export with NonMaxSuppression appended (as an end-to-end export writes it): boxes
    [N, A, 4] in ``encoding`` (cxcywh: center_point_box 1; yxyx: 0), scores [N, C, A]; the only output
    is NMS's selected indices."""
    g = model.graph
    nodes = [helper.make_node("Transpose", ["output0"], ["rows"], perm=[0, 2, 1]),
             helper.make_node("Slice", ["rows", "b0", "b4", "ax2"], ["cxcywh"]),
             helper.make_node("Slice", ["output0", "b4", "bend", "ax1"], ["nms_scores"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("b0", [0]), ("b4", [4]), ("bend", [100]), ("ax1", [1]), ("ax2", [2]),
                          ("maxk", [20]))]
    inits += [numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
              numpy_helper.from_array(np.array([0.1], np.float32), "thr")]
    boxes = "cxcywh"
    if encoding == "yxyx":
        centre_to_yxyx = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, -0.5, 0, 0.5], [-0.5, 0, 0.5, 0]],
                                  np.float32)
        inits.append(numpy_helper.from_array(centre_to_yxyx, "to_yxyx"))
        nodes.append(helper.make_node("MatMul", ["cxcywh", "to_yxyx"], ["yxyx"]))
        boxes = "yxyx"
    nodes.append(helper.make_node("NonMaxSuppression", [boxes, "nms_scores", "maxk", "iou", "thr"],
                                  ["selected"], center_point_box=int(encoding == "cxcywh")))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("selected", onnx.TensorProto.INT64, [None, 3]))
    return model


@pytest.mark.parametrize("encoding", ["cxcywh", "yxyx"])
def test_nms_inside_the_graph_is_bypassed(encoding):
    model = detector("yolov8")
    result = export_model(with_nms(export_detector(model, SIZE), encoding), task="detect")
    c = result.contract
    assert c.head.convention == "nms" and c.head.tensors == (encoding, "nms_scores")
    x, target = feeds(c, np.random.default_rng(2))
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    raw = model(torch.from_numpy(x)).detach().numpy()
    boxes, classes, _ = decode(raw, "yolov8", False, SIZE)
    assert rel_err(outs["sise/det/boxes"], boxes) <= 1e-6
    assert rel_err(outs["sise/det/classes"], classes) <= 1e-6
    assert outs["selected"].shape[1] == 3  # NMS still runs as the model's own output
    _, grads = torch_detection_gradients(model, x, target)
    for block, grad in zip(c.blocks, grads):
        assert rel_err(outs[block.grad_output], grad) <= TOL


def test_two_stage_end_to_end_and_unknown_heads_are_refused_naming_what():
    model = export_detector(detector("yolov8"), SIZE)
    roi = onnx.ModelProto()
    roi.CopyFrom(model)
    roi.graph.node.append(helper.make_node("RoiAlign", ["x", "rois", "idx"], ["crops"], name="roi_heads"))
    with pytest.raises(ModelInputError, match="'roi_heads' \\(RoiAlign\\).*two-stage"):
        export_model(roi, task="detect")
    end2end = onnx.ModelProto()  # the 20 best rows kept by a TopK, as an end-to-end head does
    end2end.CopyFrom(model)
    end2end.graph.node.extend([helper.make_node("Transpose", ["output0"], ["rows"], perm=[0, 2, 1]),
                               helper.make_node("TopK", ["rows", "k"], ["detections", "kept"], axis=1,
                                                name="keep_best")])
    end2end.graph.initializer.append(numpy_helper.from_array(np.array([20], np.int64), "k"))
    del end2end.graph.output[:]
    end2end.graph.output.append(helper.make_tensor_value_info("detections", onnx.TensorProto.FLOAT, None))
    with pytest.raises(ModelInputError, match="'detections' holds detections picked by node 'keep_best'"):
        export_model(end2end, task="detect")
    with pytest.raises(ModelInputError, match="no detection head.*--head yolov8\\|yolov5\\|yolox\\|nms"):
        export_model(export_detector(detector("yolov8"), SIZE), task="detect", head="yolov5")
    with pytest.raises(ModelInputError, match="--head ssd: choose one of auto, yolov8"):
        export_model(model, task="detect", head="ssd")


def test_a_yolox_head_whose_anchors_are_not_one_per_cell_is_refused():
    model = export_detector(detector("yolox"), SIZE)
    model.graph.node.append(helper.make_node("Concat", ["output0"] * 3, ["tripled"], axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("tripled", onnx.TensorProto.FLOAT, None))
    with pytest.raises(ModelInputError, match="252 anchors, but a YOLOX head on a 64x64 input .* has 84"):
        export_model(model, task="detect", head="yolox")


@pytest.mark.parametrize("convention,sigmoid", [("yolov8", True), ("yolov5", False), ("yolox", False),
                                                ("gfl-nchw", False), ("centernet", True)])
def test_detection_gradients_match_central_differences_on_the_model_itself(convention, sigmoid):
    """Shift one channel of a block by +-eps everywhere in the original ONNX model: the detection's score
    (decoded in numpy from the raw output, float64) changes by H*W*eps*alpha_c, alpha from the export."""
    from .test_real_models import perturbable

    model = detector(convention, sigmoid)
    original = export_detector(model, SIZE)
    head = "yolox" if convention == "yolox" else "auto"
    result = export_model(original, task="detect", head=head)
    c = result.contract
    x = np.random.default_rng(3).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    target = np.zeros((1, c.head.num_anchors, c.head.num_classes), np.float32)
    target[0, 21, 2] = 1.0  # one detection: anchor 21, class 2
    outs = run_model(result.model, {c.input_name: x, c.target_input: target}, optimize=False)
    eps = 1e-3
    for b in c.blocks:
        grad = outs[b.grad_output][0].astype(np.float64)
        shifted = perturbable(original, b.tensor, b.channels)
        h, w = b.shape[2:]
        for k in np.argsort(-np.abs(grad))[:3]:
            delta = np.zeros((1, b.channels, 1, 1), np.float32)
            delta[0, k] = eps
            score = []
            for sign in (1, -1):
                names = model.output_names() if convention in SPLIT_KINDS else ["output0"]
                raw = run_model(shifted, {c.input_name: x, "delta": sign * delta}, optimize=False,
                                outputs=names)
                if convention in SPLIT_KINDS:
                    _, classes, objectness = split_canonical(raw, convention, not sigmoid, SIZE)
                else:
                    _, classes, objectness = decode(raw["output0"], convention, not sigmoid, SIZE)
                score.append(float(objectness[0, 21] * classes[0, 21, 2]))
            fd = (score[0] - score[1]) / (2 * eps)
            analytic = h * w * grad[k]
            assert abs(fd - analytic) <= 2e-2 * abs(analytic) + 1e-6, (b.index, int(k), fd, analytic)


# ----- split heads: GFL/DFL per stride, CenterNet maps ---------------------------------------------------
@pytest.mark.parametrize("kind", SPLIT_KINDS)
@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid-inside", "logits"])
def test_split_heads_give_the_canonical_head_and_the_detection_gradients(kind, sigmoid):
    model = detector(kind, sigmoid)
    original = export_detector(model, SIZE)
    result = export_model(original, task="detect")  # found by itself among the outputs
    c = result.contract
    convention = "centernet" if kind == "centernet" else "gfl"
    assert c.head.convention == convention and c.head.logits == (not sigmoid)
    anchors = (SIZE // 8) ** 2 if kind == "centernet" else 64 + 16 + 4
    assert (c.head.num_anchors, c.head.num_classes) == (anchors, 3)
    assert len(c.blocks) == len(TAPS)
    x, target = feeds(c, np.random.default_rng(0))
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    boxes, classes, objectness = split_canonical({n: outs[n] for n in model.output_names()}, kind,
                                                 not sigmoid, SIZE)
    assert rel_err(outs["sise/det/boxes"], boxes) <= 1e-5
    assert rel_err(outs["sise/det/classes"], classes) <= 1e-6
    assert rel_err(outs["sise/det/objectness"], objectness) <= 1e-6
    plain = run_model(original, {"images": x})  # the original outputs, bit for bit
    for name in model.output_names():
        assert np.array_equal(outs[name], plain[name]), name
    acts, grads = torch_detection_gradients(model, x, target)
    for block, act, grad in zip(c.blocks, acts, grads):
        assert rel_err(outs[block.act_output], act) <= TOL
        err = rel_err(outs[block.grad_output], grad)
        assert err <= TOL, f"{kind} block {block.index}: gradient rel. error {err:.2e}"


def test_split_heads_named_explicitly_and_refused_in_one_line():
    gfl = export_detector(detector("gfl-nchw", False), SIZE)
    assert export_model(gfl, task="detect", head="gfl").contract.head.bins == 8
    with pytest.raises(ModelInputError, match=r"--head centernet: the outputs \(reg_8 \[1, 32, 8, 8\], .*\) "
                                              r"do not make one: a CenterNet head has three"):
        export_model(gfl, task="detect", head="centernet")
    single = export_detector(detector("yolov8"), SIZE)
    with pytest.raises(ModelInputError, match=r"--head gfl: .* a GFL head has outputs at two strides or "):
        export_model(single, task="detect", head="gfl")
