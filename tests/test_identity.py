"""A part's identity on the line (serial, line, camera, product, tags) through every way in: the file name
pattern and the JSON sidecar (`inspector watch` as a real subprocess, `inspector audit`), `inspector
explain`'s flags; the same bytes under two serials are two parts of one result; what cannot be read is
noted, never fatal. The station's API and pages are tested in test_station_api.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import yaml

from inspector.common.identity import Identity, IdentityError, compile_pattern, identify, make_identity
from inspector.config import config_from_dict
from inspector.demo import example_dir
from inspector.errors import ConfigError

from .test_watch import service, wait_for

SAMPLES = os.path.join(example_dir(), "samples")


def config(tmp_path, **identity) -> str:
    """The bundled example config with an identity rule, written to tmp_path."""
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw["identity"] = identity
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def parts(db_path) -> list[tuple]:
    """(serial, line, camera, product, tags, note, image SHA-256) per part, read with sqlite3."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT p.serial, p.line, p.camera, p.product, p.tags, p.note, r.image_sha256 "
                          "FROM parts p JOIN results r ON r.id = p.result_id ORDER BY p.id").fetchall()
    finally:
        db.close()
    return [(*r[:4], tuple(json.loads(r[4]) or ()) if r[4] else (), *r[5:]) for r in rows]


# ----- the rule itself --------------------------------------------------------------------------------
def test_a_pattern_reads_the_fields_and_refuses_unknown_ones():
    rule = compile_pattern("{line}_{camera}_{serial}.png")
    assert rule.fullmatch("L3_cam2_A-100_7.png").groupdict() == {"line": "L3", "camera": "cam2",
                                                                 "serial": "A-100_7"}
    assert rule.fullmatch("L3_cam2_A1.jpg") is None
    assert compile_pattern("{*}-{serial}.{*}").fullmatch("2026-12-07-SN77.png").group("serial") == "SN77"
    for bad, why in (("{line}_{lien}.png", "{lien} is not a field"), ("{serial}_{serial}", "twice"),
                     ("part.png", "names no field")):
        with pytest.raises(IdentityError, match=why):
            compile_pattern(bad)
    with pytest.raises(ConfigError, match="identity.pattern: {lien} is not a field"):
        config_from_dict({"model": "m.onnx", "identity": {"pattern": "{lien}.png"}})


def test_fields_are_checked_and_the_sidecar_wins_field_by_field(tmp_path):
    with pytest.raises(IdentityError, match="serial: control characters"):
        make_identity(serial="A1\x1b[2J")
    with pytest.raises(IdentityError, match="line: longer than 200"):
        make_identity(line="x" * 201)
    with pytest.raises(IdentityError, match="tags: at most 20"):
        make_identity(tags=[str(i) for i in range(21)])
    assert make_identity(serial="  A1 ", tags="a, b,a,,") == Identity(serial="A1", tags=("a", "b"))
    rule = compile_pattern("{line}_{serial}.png")
    image = tmp_path / "L3_A100.png"
    image.write_bytes(b"")
    assert identify(str(image), rule, True) == (Identity(serial="A100", line="L3"), None)
    (tmp_path / "L3_A100.png.json").write_text(json.dumps({"serial": "A100-B", "camera": "c2",
                                                           "tags": ["rework"]}))
    assert identify(str(image), rule, True) == (Identity(serial="A100-B", line="L3", camera="c2",
                                                         tags=("rework",)), None)
    (tmp_path / "L3_A100.png.json").write_text('{"serial": "A1", "colour": "red"}')
    found, note = identify(str(image), rule, True)
    assert found == Identity(serial="A100", line="L3") and "unknown key(s) ['colour']" in note
    (tmp_path / "L3_A100.png.json").write_bytes(b"\xff\xfe")
    assert "L3_A100.png.json:" in identify(str(image), rule, True)[1]
    found, note = identify(str(tmp_path / "odd.png"), rule, False)
    assert found.empty and "does not match identity.pattern" in note


# ----- watch: pattern and sidecar, the sidecar follows the image ---------------------------------------
def test_watch_reads_identity_from_names_and_sidecars(tmp_path):
    """Five images: two by the pattern alone, one with a sidecar that overrides its serial and adds tags,
    one whose sidecar is broken (the part is still recorded, the note says why), one named off-pattern.
    Two of them have the same bytes under two serials: two parts, one result. Sidecars move with their
    images into done/."""
    cfg = config(tmp_path, pattern="{line}_{camera}_{serial}.png", sidecar=True)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    staged = tmp_path / "staged"
    staged.mkdir()
    files = {"L3_cam2_A100.png": "crack", "L3_cam2_A102.png": "crack", "L3_cam2_A101.png": "pits",
             "L3_cam2_A103.png": "stain", "odd.png": "ok"}
    for name, sample in files.items():
        shutil.copyfile(os.path.join(SAMPLES, f"{sample}.png"), staged / name)
    (staged / "L3_cam2_A101.png.json").write_text(json.dumps({"serial": "A101-R", "product": "gear",
                                                              "tags": ["rework", "night"]}))
    (staged / "L3_cam2_A103.png.json").write_text("{not json")
    for name in sorted(os.listdir(staged)):  # sidecars first, as the line PC must write them
        if name.endswith(".json"):
            os.rename(staged / name, inbox / name)
    for name in sorted(os.listdir(staged)):
        os.rename(staged / name, inbox / name)
    with service(tmp_path, "watch.log", "--store", f"sqlite:///{out}/results.db", config=cfg) as proc:
        assert wait_for(lambda: len(os.listdir(out / "done")) == 7 if (out / "done").exists() else False), \
            (tmp_path / "watch.log").read_text()
        assert proc.poll() is None
    rows = {r[0] or r[5][:30]: r for r in parts(out / "results.db")}
    assert rows["A100"][:5] == ("A100", "L3", "cam2", None, ())
    assert rows["A102"][:5] == ("A102", "L3", "cam2", None, ())
    assert rows["A100"][6] == rows["A102"][6]  # the same bytes: one result, two parts
    assert rows["A101-R"][:5] == ("A101-R", "L3", "cam2", "gear", ("rework", "night"))
    assert rows["A103"][:4] == ("A103", "L3", "cam2", None) and "L3_cam2_A103.png.json" in rows["A103"][5]
    odd = next(r for r in rows.values() if r[0] is None)
    assert "'odd.png' does not match identity.pattern" in odd[5]
    db = sqlite3.connect(out / "results.db")
    assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 4
    db.close()
    sidecars = ["L3_cam2_A101.png.json", "L3_cam2_A103.png.json"]
    assert sorted(os.listdir(out / "done")) == sorted([*files, *sidecars])
    assert not os.listdir(inbox)
    log = (tmp_path / "watch.log").read_text()
    assert "WARNING L3_cam2_A103.png: identity: L3_cam2_A103.png.json:" in log


# ----- audit and explain -------------------------------------------------------------------------------
def _inspector(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_audit_and_explain_record_the_identity(tmp_path):
    cfg = config(tmp_path, pattern="{product}-{serial}.png")
    folder = tmp_path / "lot"
    folder.mkdir()
    for name, sample in (("gear-G1.png", "crack"), ("gear-G2.png", "crack"), ("shaft-S9.png", "ok")):
        shutil.copyfile(os.path.join(SAMPLES, f"{sample}.png"), folder / name)
    done = _inspector("audit", "-c", cfg, str(folder), "--out", str(tmp_path / "audit"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "audit" / "results.csv", newline="") as f:
        table = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert {k: (r["product"], r["serial"]) for k, r in table.items()} == {
        "gear-G1.png": ("gear", "G1"), "gear-G2.png": ("gear", "G2"), "shaft-S9.png": ("shaft", "S9")}
    assert table["gear-G1.png"]["result_id"] == table["gear-G2.png"]["result_id"]  # one explanation

    one = str(folder / "shaft-S9.png")
    cli = _inspector("explain", "-c", os.path.join(example_dir(), "config.yaml"), one, "--out",
                     str(tmp_path / "x"), "--serial", "S9-again", "--line", "L1", "--tag", "audit",
                     "--tag", "q")
    assert cli.returncode == 0, cli.stderr
    assert parts(tmp_path / "x" / "results.db")[0][:5] == ("S9-again", "L1", None, None, ("audit", "q"))
    two = _inspector("explain", "-c", cfg, one, str(folder / "gear-G1.png"), "--out", str(tmp_path / "y"),
                     "--serial", "X")
    assert two.returncode == 2 and "--serial names one part, but 2 images were given" in two.stderr
    bad = _inspector("explain", "-c", cfg, one, "--out", str(tmp_path / "z"), "--line", "L\x07")
    assert bad.returncode == 2 and "line: control characters are not allowed" in bad.stderr


def test_hidden_characters_are_refused_and_a_bad_name_never_stops_an_audit(tmp_path):
    """Unpaired surrogates (a non-UTF-8 file name, an escaped one in a sidecar), C1 controls, bidi
    overrides and zero-width characters are no identity; the images are still explained and recorded."""
    for value in ("\ud800", "A\udcffB", "SN\x85", "SN\u202e1", "S\u200bN"):
        with pytest.raises(IdentityError, match="control characters are not allowed"):
            make_identity(serial=value)
    cfg = config(tmp_path, pattern="{line}_{camera}_{serial}.png", sidecar=True)
    folder = tmp_path / "lot"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"L\xff_cam_S3.png")
    shutil.copyfile(os.path.join(SAMPLES, "crack.png"), odd)
    shutil.copyfile(os.path.join(SAMPLES, "pits.png"), folder / "L2_cam_S2.png")
    (folder / "L2_cam_S2.png.json").write_text('{"serial": "\\ud800"}')
    (folder / "L1_cam_S1.png.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"serial": "BOM-1"}).encode())
    shutil.copyfile(os.path.join(SAMPLES, "stain.png"), folder / "L1_cam_S1.png")
    done = _inspector("audit", "-c", cfg, str(folder), "--out", str(tmp_path / "audit"))
    assert done.returncode == 0, done.stderr
    rows = parts(tmp_path / "audit" / "results.db")
    assert len(rows) == 3
    by_line = {r[1]: r for r in rows}
    assert by_line["L1"][0] == "BOM-1"  # a sidecar with a BOM, as Windows tools write it
    assert by_line["L2"][:2] == ("S2", "L2") and "control characters" in by_line["L2"][5]
    odd_row = next(r for r in rows if r[1] is None)
    assert "control characters" in odd_row[5]
