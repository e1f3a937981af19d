"""`python -m onnx_tools` on bad input: every failure, usage errors and unexpected exceptions included,
is one `error: ...` line on stderr with exit code 2; `--debug` shows the traceback; `--version`."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import onnx
import pytest

from .test_cli import small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(*args, code: str | None = None) -> subprocess.CompletedProcess:
    command = ["-c", code] if code else ["-m", "onnx_tools"]
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=ENV, check=False)


def error_line(r: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (asserting there is exactly one, and exit code 2)."""
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(small_cnn(), path)
    return path


@pytest.mark.parametrize("shape, expect", [
    ("1,3,abc", "'1,3,abc' is not a comma-separated list of integers"),
    ("1,3,16", "'1,3,16' must be four positive integers"),
    ("1,3,0,16", "'1,3,0,16' must be four positive integers"),
    ("", "must be four positive integers"),
])
def test_bad_input_shape(model_file, tmp_path, shape, expect):
    line = error_line(run("export", model_file, "-o", tmp_path / "o.onnx", "--input-shape", shape))
    assert line.startswith("error: argument --input-shape: ") and expect in line, line
    line = error_line(run("inspect", model_file, "--input-shape", shape))
    assert expect in line, line


@pytest.mark.parametrize("args, expect", [
    ((), "required: command"),
    (("frob",), "invalid choice: 'frob'"),
    (("export",), "required: model, -o/--out"),
    (("export", "m.onnx", "-o", "o.onnx", "--score", "cube"), "argument --score: invalid choice"),
    (("inspect", "m.onnx", "--bogus"), "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line(args, expect):
    line = error_line(run(*args))
    assert expect in line and "--help" in line, line


def test_output_in_a_missing_folder(model_file, tmp_path):
    line = error_line(run("export", model_file, "-o", tmp_path / "no" / "such" / "o.onnx"))
    assert f"output folder {tmp_path / 'no' / 'such'} does not exist" in line, line


def test_output_is_an_existing_folder(model_file, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    line = error_line(run("export", model_file, "-o", folder))
    assert f"output path {folder} is a folder" in line, line
    assert os.listdir(folder) == []
    line = error_line(run("export", tmp_path / "missing.onnx", "-o", folder))  # was an OSError from samefile
    assert "is a folder" in line, line


def test_os_errors_name_the_path(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file where the example wants a folder")
    assert error_line(run("example", "-o", taken)) == f"error: {taken}: File exists"


BOOM = """
import sys
import onnx_tools.cli as cli

def boom(args):
    raise RuntimeError("boom\\nsecond line")

cli.cmd_inspect = boom
sys.exit(cli.main(sys.argv[1:]))
"""


def test_any_exception_is_one_line(model_file):
    line = error_line(run("inspect", model_file, code=BOOM))
    assert line.startswith("error: unexpected RuntimeError: boom; second line; rerun with --debug"), line


def test_debug_shows_the_traceback(model_file, tmp_path):
    r = run("--debug", "inspect", model_file, code=BOOM)
    assert r.returncode not in (0, 2) and "Traceback (most recent call last)" in r.stderr
    assert "RuntimeError: boom" in r.stderr
    r = run("--debug", "export", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode not in (0, 2) and "Traceback" in r.stderr and "ModelLoadError" in r.stderr
    assert error_line(run("export", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx")) == (
        f"error: {tmp_path / 'missing.onnx'}: no such file")


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    try:
        expected = importlib.metadata.version("sise-inspector")
    except importlib.metadata.PackageNotFoundError:
        expected = "unknown"
    assert r.stdout == f"onnx_tools {expected}\n"


def test_inspect_names_the_model_file_in_an_analysis_error(model_file):
    """`export` named the file in its errors, `inspect` did not (`error: no convolutional block ...`)."""
    line = error_line(run("inspect", model_file, "--blocks", "no_such_tensor"))
    assert line.startswith(f"error: {model_file}: ") and "no_such_tensor" in line, line
