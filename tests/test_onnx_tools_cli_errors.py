"""`python -m onnx_tools` on bad input: one `error: ...` line on stderr with exit code 2."""

from __future__ import annotations

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
