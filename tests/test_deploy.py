"""deploy/edge/install.sh in a temporary prefix (CPU flavour), ending with a passing `inspector doctor`."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_edge_install_script_cpu(tmp_path):
    prefix = tmp_path / "sise"
    r = subprocess.run(["bash", os.path.join(ROOT, "deploy", "edge", "install.sh"), "--prefix", str(prefix),
                        "--flavour", "cpu"], capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "doctor: all good" in r.stdout and "CPUExecutionProvider     works" in r.stdout
    assert os.path.isfile(prefix / "bin" / "inspector")
    freeze = subprocess.run([str(prefix / "bin" / "pip"), "freeze"], capture_output=True, text=True,
                            check=True).stdout
    assert "onnxruntime==" in freeze and "onnxruntime-gpu" not in freeze and "torch" not in freeze


def test_install_script_rejects_bad_options(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "deploy", "edge", "install.sh"), "--flavour", "tpu"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--flavour must be auto, cpu or gpu" in r.stderr
