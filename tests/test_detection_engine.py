"""The engine on detectors: every kept detection explained by SISE, checked against the independent PyTorch
SISE of the same detection (tests/sise_reference.py with the detection's own score as psi and D-RISE's
similarity as the masked images' score); the sampler's similarity against a numpy computation; the
masked images shared between the detections of an image; detections found by the engine's NMS as a
straightforward numpy NMS finds them; boxes mapped back onto the original image."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnx_tools import export_model

from .detectors import detector, export_detector, torch_canonical
from .sise_reference import detection_scores, sise_reference

SIZE = 64


def pearson(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """convention -> (torch model, Inspector on its export), inputs scaled to [0, 1]."""
    from inspector import Inspector

    out = {}
    for convention in ("yolov8", "yolov5", "yolox", "gfl-nchw", "centernet"):
        # yolov8 and the split heads with logits (the sigmoid applied by the export); centernet's inside
        model = detector(convention, sigmoid=convention in ("yolov5", "yolox", "centernet"))
        path = tmp_path_factory.mktemp(convention) / "det.sise.onnx"
        head = "yolox" if convention == "yolox" else "auto"
        onnx.save(export_model(export_detector(model, SIZE), task="detect", head=head).model, path)
        insp = Inspector.from_options(model=str(path), preprocess={"mean": [0, 0, 0], "std": [1, 1, 1],
                                                                   "scale": 1 / 255},
                                      runtime={"providers": ["CPUExecutionProvider"]},
                                      detect={"conf": 0.05, "max_detections": 4})
        out[convention] = (model, insp)
    return out


def image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("convention", ["yolov8", "yolov5", "yolox", "gfl-nchw", "centernet"])
def test_each_detection_is_explained_as_the_pytorch_sise_explains_it(engines, convention):
    model, insp = engines[convention]
    picture = image(1)
    explanations = insp.explain(picture)
    assert 2 <= len(explanations) <= 4
    x = (picture.astype(np.float32) / 255).transpose(2, 0, 1)[None].copy()
    canonical = torch_canonical(model, SIZE)
    for exp in explanations:
        d = exp.detection
        psi, score = detection_scores(canonical, d.anchor, d.class_index, d.box_input)
        maps, fused, counts = sise_reference(model, ["stem", "stage1", "stage2"], x, d.class_index, psi=psi,
                                             score=score)
        assert list(exp.masks_per_layer) == counts, (d, exp.masks_per_layer, counts)
        for b, ref in enumerate(maps):
            if ref is not None:
                assert pearson(exp.layer_maps[b], ref) >= 0.99, (d, b)
        assert pearson(exp.saliency, fused) >= 0.99


def test_the_engines_detections_are_a_plain_nms_of_the_head(engines):
    """Anchors' best class from conf up, class-wise NMS at IoU 0.45, highest first: against a
    straightforward numpy NMS over the canonical head the model's own output decodes to."""
    from .detectors import decode

    model, insp = engines["yolov5"]
    picture = image(2)
    raw = model(torch.from_numpy((picture.astype(np.float32) / 255).transpose(2, 0, 1)[None].copy()))
    boxes, classes, obj = (v[0] for v in decode(raw.detach().numpy(), "yolov5", False, SIZE))
    scores = obj[:, None] * classes
    best, top = scores.argmax(1), scores.max(1)
    order = [a for a in np.argsort(-top) if top[a] >= 0.05]
    def overlap(a, b):
        w = max(0, min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0]))
        h = max(0, min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1]))
        area_a = (boxes[a, 2] - boxes[a, 0]) * (boxes[a, 3] - boxes[a, 1])
        area_b = (boxes[b, 2] - boxes[b, 0]) * (boxes[b, 3] - boxes[b, 1])
        return w * h / (area_a + area_b - w * h)
    kept = []
    for a in order:
        if all(best[b] != best[a] or overlap(a, b) <= 0.45 for b in kept):
            kept.append(a)
    kept = kept[:4]
    found = [e.detection for e in insp.explain(picture, method="gradcam")]
    assert [(d.anchor, d.class_index) for d in found] == [(int(a), int(best[a])) for a in kept]
    assert np.allclose([d.score for d in found], top[kept], atol=1e-5)


def test_the_sampler_similarity_is_d_rise_s(engines):
    """The mask scorer's score of masked images for target detections: numpy's IoU x cosine x
    objectness, best over anchors, from the model's own raw output on the same masked images."""
    from .detectors import decode

    model, insp = engines["yolov5"]
    picture = image(3)
    tensor, _ = insp.prepare(picture)
    masks = np.random.default_rng(4).random((5, SIZE, SIZE)).astype(np.float32)
    boxes_t = np.array([[10, 12, 40, 50], [0, 0, 64, 64]], np.float32)
    classes_t = np.eye(3, dtype=np.float32)[[1, 2]]
    got = insp.sessions.score_masks(tensor, masks, classes_t, chunk=3, target_boxes=boxes_t)
    raw = model(torch.from_numpy(tensor * masks[:, None])).detach().numpy()
    boxes, classes, obj = decode(raw, "yolov5", False, SIZE)
    expected = np.zeros((5, 2))
    for t in range(2):
        b = boxes_t[t]
        w = np.clip(np.minimum(boxes[..., 2], b[2]) - np.maximum(boxes[..., 0], b[0]), 0, None)
        h = np.clip(np.minimum(boxes[..., 3], b[3]) - np.maximum(boxes[..., 1], b[1]), 0, None)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        union = area + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        cosine = classes @ classes_t[t] / np.linalg.norm(classes, axis=-1)
        expected[:, t] = (w * h / union * cosine * obj).max(1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_detections_share_their_masked_images(engines):
    """The forward passes of an image's explanations: the union of the maps its detections selected,
    not their sum (each detection's own count is what its map used)."""
    from inspector.engine.methods import sise

    _, insp = engines["yolov8"]
    calls = []
    real = insp.sessions.run_sampler

    def counting(feeds, device_feeds, outputs):
        calls.append(sum(len(v) for k, v in feeds.items() if k.startswith("sampler/idx/")))
        return real(feeds, device_feeds, outputs)
    insp.sessions.run_sampler = counting
    try:
        explanations = insp.explain(image(1))
    finally:
        del insp.sessions.run_sampler
    assert sise.PAD_DEVICES and insp.sessions.device == "cpu"  # no padding on the CPU: calls count maps
    total = sum(e.total_masks for e in explanations)
    assert len(explanations) >= 2 and sum(calls) < total, (sum(calls), total)


def test_a_detections_box_is_in_the_original_images_pixels(engines):
    """A 192x128 image (H x W) stretched to the 64x64 input: boxes scale back by 2 in x and 3 in y."""
    _, insp = engines["yolov8"]
    small = image(1)
    wide = np.repeat(np.repeat(small, 2, axis=1), 3, axis=0)[:192, :128]  # 192 x 128
    found = insp.explain(wide, method="gradcam")
    for e in found:
        bx, by = e.detection.box_input, e.detection.box
        assert np.allclose(by, [min(max(bx[0] * 2, 0), 128), min(max(bx[1] * 3, 0), 192),
                                min(max(bx[2] * 2, 0), 128), min(max(bx[3] * 3, 0), 192)], atol=1e-3)
