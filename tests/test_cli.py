"""`python -m onnx_tools` as a user runs it: success output, and one clear error line with a
non-zero exit for each kind of bad input, with the input untouched and nothing left behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tools import read_contract


def cli(*args, cwd=None):
    return subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", sys.executable, "-m", "onnx_tools",
                           *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          check=False)


def small_cnn(x_dims=(1, 3, 16, 16), extra_image_input=False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))]
    if extra_image_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 16, 16]))
        nodes[0].input[0] = "xm"
        nodes.insert(0, helper.make_node("Mul", ["x", "mask"], ["xm"]))
    graph = helper.make_graph(nodes, "small", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [x_dims[0], 5])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what exporters write for opset 17; onnx's newest IR needs onnxruntime >= 1.32
    return model


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_clean_failure(result, folder, *, expect: str):
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expect in lines[0], lines[0]
    leftovers = [f for f in os.listdir(folder) if f.endswith((".part", ".sise.onnx"))]
    assert leftovers == [], leftovers


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(small_cnn(), path)
    return path


def test_export_and_inspect(model_file, tmp_path):
    out = tmp_path / "small.sise.onnx"
    before = digest(model_file)
    r = cli("export", model_file, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "2 blocks, 8 feature maps" in r.stdout
    assert digest(model_file) == before
    assert os.stat(out).st_mode & 0o777 == 0o644  # what the umask allows, so a service user can read it
    c = read_contract(onnx.load(out))
    assert [b.tensor for b in c.blocks] == ["r1", "r2"]
    r = cli("inspect", model_file)
    assert r.returncode == 0, r.stderr
    assert "0: r1  C=4 16x16" in r.stdout and "1: r2  C=4 8x8" in r.stdout
    assert "MaxPool" in r.stdout and "UNSUPPORTED" not in r.stdout
    r = cli("inspect", out)
    assert r.returncode == 0 and "already exported" in r.stdout


def test_explicit_blocks_and_score(model_file, tmp_path):
    out = tmp_path / "one.sise.onnx"
    r = cli("export", model_file, "-o", out, "--blocks", "r2", "--score", "logit")
    assert r.returncode == 0, r.stderr
    c = read_contract(onnx.load(out))
    assert [b.tensor for b in c.blocks] == ["r2"] and c.score == "logit"


def test_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    assert_clean_failure(cli("export", bad, "-o", tmp_path / "o.sise.onnx"), tmp_path, expect="notes.onnx")


def test_truncated(model_file, tmp_path):
    data = model_file.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_failure(cli("export", cut, "-o", tmp_path / "o.sise.onnx"), tmp_path, expect="cut.onnx")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_clean_failure(cli("export", empty, "-o", tmp_path / "o.sise.onnx"), tmp_path, expect="empty")
    assert_clean_failure(cli("export", tmp_path / "nope.onnx", "-o", tmp_path / "o.sise.onnx"), tmp_path,
                         expect="no such file")


def test_external_data_is_read_and_a_missing_data_file_named(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(small_cnn(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (tmp_path / "out").mkdir()
    r = cli("export", path, "-o", tmp_path / "out" / "ext.sise.onnx")
    assert r.returncode == 0, r.stderr
    # (its tensors are all under 1 KiB, which stay in the graph: the export is one file)
    assert os.listdir(tmp_path / "out") == ["ext.sise.onnx"]
    (tmp_path / "ext.data").unlink()
    assert_clean_failure(cli("export", path, "-o", tmp_path / "o.sise.onnx"), tmp_path,
                         expect="ext.data, which does not exist")


def test_dynamic_spatial_dims_need_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(small_cnn(x_dims=("N", 3, "H", "W")), path)
    assert_clean_failure(cli("export", path, "-o", tmp_path / "o.sise.onnx"), tmp_path,
                         expect="--input-shape")
    r = cli("export", path, "-o", tmp_path / "dyn.sise.onnx", "--input-shape", "1,3,16,16")
    assert r.returncode == 0, r.stderr
    c = read_contract(onnx.load(tmp_path / "dyn.sise.onnx"))
    assert c.input_shape == ("N", 3, 16, 16)


def test_two_image_inputs(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(small_cnn(extra_image_input=True), path)
    assert_clean_failure(cli("export", path, "-o", tmp_path / "o.sise.onnx"), tmp_path,
                         expect="more than one image-like input")


def test_output_equal_to_input(model_file, tmp_path):
    before = digest(model_file)
    r = cli("export", model_file, "-o", model_file)
    assert r.returncode != 0 and "is the input model" in r.stderr
    assert digest(model_file) == before


def test_already_exported(model_file, tmp_path):
    out = tmp_path / "a.sise.onnx"
    assert cli("export", model_file, "-o", out).returncode == 0
    before = digest(out)
    r = cli("export", out, "-o", tmp_path / "b.onnx")
    assert r.returncode != 0 and "already a SISE export" in r.stderr
    assert digest(out) == before and not (tmp_path / "b.onnx").exists()


def test_missing_output_folder(model_file, tmp_path):
    r = cli("export", model_file, "-o", tmp_path / "no" / "such" / "dir" / "o.onnx")
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_example_command(tmp_path):
    r = cli("example", "-o", tmp_path / "ex")
    assert r.returncode == 0, r.stderr
    assert "5 blocks, 3904 feature maps" in r.stdout
    assert (tmp_path / "ex" / "resnet50.sise.onnx").exists()
