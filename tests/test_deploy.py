"""The deployment kit: deploy/edge/install.sh in a temporary prefix (CPU flavour, ending with a passing
`inspector doctor`), and the systemd units through `systemd-analyze verify`."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

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


# --- systemd units -------------------------------------------------------------------------------------

UNITS = sorted(glob.glob(os.path.join(ROOT, "deploy", "systemd", "*.service")))
INSTALLED_INSPECTOR = "/opt/sise-inspector/bin/inspector"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None)
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def verify_unit(text: str, name: str, tmp_path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on a copy of a unit whose inspector commands point at an executable that
    exists here (the real /opt/sise-inspector/bin/inspector is not installed on a test machine, and verify
    fails on a missing ExecStart binary before anything else). Everything else is the unit as shipped."""
    fake = tmp_path / "bin" / "inspector"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert INSTALLED_INSPECTOR in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_INSPECTOR, str(fake)))
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_there_are_units_to_check():
    assert [os.path.basename(u) for u in UNITS] == ["sise-inspector-station.service",
                                                    "sise-inspector-watch.service"]


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=os.path.basename)
def test_systemd_unit_verifies_without_a_complaint(unit, tmp_path):
    """Every line of the unit is taken: systemd-analyze says nothing at all (a setting it ignores, such as
    `PrivateDevices=no  # comment`, is reported as 'Failed to parse boolean value, ignoring')."""
    with open(unit, encoding="utf-8") as f:
        r = verify_unit(f.read(), os.path.basename(unit), tmp_path)
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


@needs_systemd_analyze
def test_the_unit_check_catches_an_inline_comment(tmp_path):
    """The check above can fail: the same unit with a comment after PrivateDevices= is reported."""
    with open(UNITS[-1], encoding="utf-8") as f:
        text = f.read()
    inline = "PrivateDevices=no  # the GPU flavour needs /dev/nvidia*"
    bad, n = re.subn(r"(?m)^PrivateDevices=.*$", inline, text)
    assert n == 1
    r = verify_unit(bad, os.path.basename(UNITS[-1]), tmp_path)
    out = r.stdout + r.stderr
    assert "Failed to parse boolean value, ignoring: no  # the GPU flavour" in out, out


@pytest.mark.parametrize("unit", UNITS, ids=os.path.basename)
def test_systemd_unit_has_comments_on_their_own_lines_only(unit):
    """systemd takes `#` and `;` comments only at the start of a line: after a value they are part of it
    (and a boolean such as PrivateDevices= is then ignored). Checked without systemd too."""
    with open(unit, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            stripped = line.strip()
            if not stripped or stripped[0] in "#;" or stripped.startswith("["):
                continue
            _, sep, value = stripped.partition("=")
            assert sep, f"{unit}:{n}: not a Key=Value line: {line!r}"
            assert "#" not in value and " ;" not in value, f"{unit}:{n}: a comment after a value: {line!r}"
