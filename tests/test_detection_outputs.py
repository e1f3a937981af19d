"""A detector's results downstream of the engine: `inspector explain` records one result per image with a
row per detection in the store (box, class, score, its evidence), files that hold every detection (the
npz's maps are the engine's, each overlay draws the boxes, one overlay per detection), the sidecar and
results.csv list them, a second run reuses them, a run that makes the files again replaces the detection
rows instead of adding to them, a part without detections is labelled detect.none_label; the station's
API returns the detections with their files and its part page lists them.

The detector is the small torch-built YOLOv8-style network of tests/detectors.py (untrained: its
detections are whatever its head gives, which is all these tests need)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from inspector.cli import main as inspector_main
from inspector.engine.inspector import Inspector
from inspector.errors import ConfigError
from inspector.jobs.artifacts import canvas_scale, image_area
from inspector.jobs.detection_artifacts import BOX_COLOURS
from inspector.jobs.views import write_views
from inspector.store import Store, default_url
from onnx_tools import export_model

from .detectors import detector, export_detector

SIZE = 64
CLASSES = ["scratch", "dent", "stain"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, config path, images folder, a config whose conf no detection reaches)."""
    root = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    onnx.save(export_model(export_detector(detector("yolov8"), SIZE), task="detect").model,
              root / "det.sise.onnx")
    images = root / "images"
    images.mkdir()
    for i in range(3):  # not square and not the model's size: boxes are mapped back
        picture = (np.random.default_rng(i).random((80, 96, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(images / f"part_{i}.png"), picture)
    text = ("model: det.sise.onnx\n"
            "preprocess: {mean: [0, 0, 0], std: [1, 1, 1], scale: 0.00392156862745098}\n"
            f"classes: [{', '.join(CLASSES)}]\ngood_classes: [ok]\n"
            "detect: {conf: 0.05, max_detections: 4}\nruntime: {providers: [CPUExecutionProvider]}\n")
    (root / "det.yaml").write_text(text)
    (root / "none.yaml").write_text(text.replace("conf: 0.05", "conf: 0.999"))
    return root, root / "det.yaml", images, root / "none.yaml"


def rows_of(db, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_explain_records_every_detection_with_its_files(setup, tmp_path, capsys):
    _, config, images, _ = setup
    out = tmp_path / "out"
    assert inspector_main(["explain", "-c", str(config), str(images), "--out", str(out)]) == 0
    assert "4 detection(s) (scratch" in capsys.readouterr().err
    insp = Inspector.from_config(str(config))  # the engine again, independently of the run
    with Store(default_url(str(out))) as store:
        ids = [r[0] for r in rows_of(out / "results.db", "SELECT id FROM results ORDER BY source_path")]
        assert len(ids) == 3
        for i, rid in enumerate(ids):
            result = store.result(rid)
            expected = insp.explain(str(images / f"part_{i}.png"))
            found = result["detections"]
            assert [d["position"] for d in found] == list(range(1, len(expected) + 1))
            assert len(found) == 4
            for d, e in zip(found, expected):
                assert d["class_name"] == CLASSES[e.detection.class_index]
                assert d["score"] == pytest.approx(e.detection.score, abs=1e-6)
                assert [d["x1"], d["y1"], d["x2"], d["y2"]] == pytest.approx(list(e.detection.box), abs=0.01)
            assert result["prediction_name"] == found[0]["class_name"]
            assert result["confidence"] == pytest.approx(found[0]["score"])
            best = [max([d["score"] for d in found if d["class_index"] == k], default=0.0) for k in range(3)]
            assert result["scores"] == pytest.approx(best)
            with np.load(result["artifacts"]["npz"]) as npz:
                maps, boxes = npz["saliency_full"], npz["boxes"]
            assert maps.shape == (4, 80, 96)
            for k, e in enumerate(expected):
                np.testing.assert_allclose(maps[k], e.saliency_full, atol=1e-6)
                x1, y1, x2, y2 = boxes[k]  # its evidence in its box, by hand
                cols, rows = np.arange(96) + 0.5, np.arange(80) + 0.5
                inside = ((rows[:, None] > np.floor(y1)) & (rows[:, None] < np.ceil(y2))
                          & (cols[None] > np.floor(x1)) & (cols[None] < np.ceil(x2)))
                assert found[k]["evidence_in_box"] == pytest.approx(maps[k][inside].sum() / maps[k].sum())
            kinds = set(result["artifacts"])
            assert kinds == {"npz", "overlay", "layers", "sidecar", "thumb", "overlay.1", "overlay.2",
                             "overlay.3", "overlay.4"}
            assert all(os.path.isfile(p) for p in result["artifacts"].values())
            for d in found:  # overlay k: detection k's box on top, in its colour
                picture = cv2.imread(result["artifacts"][f"overlay.{d['position']}"])
                top, _, _ = image_area((80, 96))
                k = canvas_scale((80, 96))  # the 80x96 scene is drawn enlarged
                x1, y1, y2 = (round(d[key] * k) for key in ("x1", "y1", "y2"))
                assert tuple(picture[top + (y1 + y2) // 2, x1]) == BOX_COLOURS[d["position"] - 1]
            sidecar = json.loads(Path(result["artifacts"]["sidecar"]).read_text(encoding="utf-8"))
            assert [(s["class"]["name"], s["box"]) for s in sidecar["detections"]] == \
                [(d["class_name"], [d["x1"], d["y1"], d["x2"], d["y2"]]) for d in found]
    assert inspector_main(["explain", "-c", str(config), str(images), "--out", str(out)]) == 0
    assert "3 were already in the store" in capsys.readouterr().out
    with Store(default_url(str(out))) as store:
        rows = write_views(store, str(tmp_path / "views"))
    assert all(len(r["detections"]) == 4 for r in rows)
    with open(tmp_path / "views" / "results.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert [len(r["detections"].split("; ")) for r in listed] == [4, 4, 4]
    assert re.fullmatch(r"(\w+ 0\.\d{3} @-?\d+,-?\d+,\d+,\d+; ){3}\w+ 0\.\d{3} @-?\d+,-?\d+,\d+,\d+",
                        listed[0]["detections"])


def test_files_made_again_replace_the_detection_rows(setup, tmp_path):
    _, config, images, _ = setup
    out = tmp_path / "out"
    assert inspector_main(["explain", "-c", str(config), str(images), "--out", str(out)]) == 0
    before = rows_of(out / "results.db", "SELECT result_id, position, class_name, score FROM detections "
                                         "ORDER BY result_id, position")
    for name in os.listdir(out / "images"):  # the files are lost: the next run explains the images again
        os.remove(out / "images" / name)
    assert inspector_main(["explain", "-c", str(config), str(images), "--out", str(out)]) == 0
    after = rows_of(out / "results.db", "SELECT result_id, position, class_name, score FROM detections "
                                        "ORDER BY result_id, position")
    assert len(before) == 12 and [r[:3] for r in after] == [r[:3] for r in before]
    assert len(os.listdir(out / "images")) == 3 * 9


def test_a_part_without_detections_is_labelled_none_label(setup, tmp_path):
    _, _, images, none = setup
    out = tmp_path / "out"
    assert inspector_main(["explain", "-c", str(none), str(images / "part_0.png"), "--out", str(out)]) == 0
    with Store(default_url(str(out))) as store:
        result = store.result(1)
    assert result["prediction_name"] == "ok" and result["confidence"] is None and result["detections"] == []
    assert set(result["artifacts"]) == {"npz", "overlay", "layers", "sidecar", "thumb"}
    sidecar = json.loads(Path(result["artifacts"]["sidecar"]).read_text(encoding="utf-8"))
    assert sidecar["detections"] == [] and sidecar["good"] is True


def test_a_target_and_classifier_only_settings_are_refused_for_a_detector(setup, tmp_path, capsys):
    root, config, images, _ = setup
    code = inspector_main(["explain", "-c", str(config), str(images), "--out", str(tmp_path / "o"),
                           "--target", "dent"])
    assert code != 0
    assert "a detector's runs explain every detection of each image; leave out the target" in \
        capsys.readouterr().err
    text = config.read_text().replace("classes: [scratch, dent, stain]", "classes: [scratch, ok, stain]")
    (root / "clash.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"detect\.none_label: 'ok' is one of classes"):
        Inspector.from_config(str(root / "clash.yaml"))


def test_drise_is_refused_for_a_classifier():
    from inspector.demo import example_dir

    with pytest.raises(ConfigError, match=r"method\.name: drise explains a detector's detections; .* rise"):
        Inspector.from_options(model=os.path.join(example_dir(), "defect_resnet.sise.onnx"),
                               method={"name": "drise"}, runtime={"providers": ["CPUExecutionProvider"]})


# ----- the station -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def station(setup, tmp_path_factory):
    from fastapi.testclient import TestClient

    from inspector.station import auth
    from inspector.station.app import create_app
    from inspector.station.service import Station, StationSettings

    _, config, images, _ = setup
    st = Station(StationSettings(config=str(config), out_dir=str(tmp_path_factory.mktemp("st") / "st")))
    auth.add_user(st.store, "rita", "reviewer-pass", "reviewer")
    with TestClient(create_app(st)) as client:
        client.get("/login")
        r = client.post("/login", data={"username": "rita", "password": "reviewer-pass", "next": "/queue",
                                        "token": client.cookies.get("sise_login")}, follow_redirects=False)
        assert r.status_code == 303, r.text
        yield st, client, images


def test_the_api_returns_the_detections_with_their_files(station):
    st, client, images = station
    data = (images / "part_1.png").read_bytes()
    r = client.post("/api/v1/explain", files={"image": ("part_1.png", data, "image/png")},
                    auth=("rita", "reviewer-pass"))
    assert r.status_code == 201, r.text
    body = r.json()
    expected = st.insp.explain(str(images / "part_1.png"))
    assert [(d["position"], d["class"]) for d in body["detections"]] == \
        [(k, CLASSES[e.detection.class_index]) for k, e in enumerate(expected, 1)]
    assert body["prediction"] == body["detections"][0]["class"]
    for d in body["detections"]:
        picture = client.get(d["overlay"])
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    listed = client.get("/api/v1/results").json()["results"]
    assert [d["box"] for d in listed[-1]["detections"]] == [d["box"] for d in body["detections"]]
    page = client.get(body["part_url"]).text
    assert "Detections (4)" in page and page.count('data-src="/parts/') == 5  # all, then each detection
    cut_url = f"/parts/{body['result_id']}/picture"
    cut = client.get(cut_url, params={"what": "overlay.2", "size": "full"})
    assert cut.status_code == 200
    cut_shape = cv2.imdecode(np.frombuffer(cut.content, np.uint8), cv2.IMREAD_COLOR).shape
    k = cut_shape[0] // 80  # a small image's overlay is drawn enlarged k times, and served so
    assert k >= 1 and cut_shape == (80 * k, 96 * k, 3)
    assert client.get(cut_url, params={"what": "npz"}).status_code == 422
    assert client.get(cut_url, params={"what": "overlay.9"}).status_code == 404
    assert '<option value="ok">ok</option>' in page  # a part can be overruled to "no defect"


def test_api_csv_cells_are_not_formulas(station):
    """results.csv's detections cell comes from class names of the config: neutralised like any cell."""
    from inspector.jobs.views import csv_text

    row = dict.fromkeys(("image_sha256", "prediction_name", "confidence", "target_name", "region_count",
                         "evidence_peak", "evidence_mean", "roi_inside", "flagged", "masks", "seconds",
                         "retryable", "result_id", "error"))
    row.update(path="a.png", status="done", shard="0/1",
               detections=[{"class": "=cmd", "score": 0.5, "box": [1, 2, 3, 4]}])
    parsed = list(csv.DictReader(io.StringIO(csv_text([row]), newline="")))
    assert parsed[0]["detections"] == "'=cmd 0.500 @1,2,3,4"
