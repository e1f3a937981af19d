"""The deployment kit: deploy/edge/install.sh in a temporary prefix (CPU flavour, ending with a passing
`inspector doctor`; with the CPU image's constraints on Python 3.12), the systemd units through
`systemd-analyze verify`, the images' constraints files against pyproject.toml and the Dockerfiles, and the
KubeRay RayJob."""

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


@pytest.mark.parametrize("args,message", [
    (["--flavour", "gpu", "--cuda", "11"], "--cuda must be 12 or 13 (got 11)"),
    (["--flavour", "cpu", "--cuda", "13"], "--cuda is for the gpu flavour (this is cpu)"),
    (["--flavour", "cpu", "--constraints", "/nonexistent/c.txt"],
     "--constraints /nonexistent/c.txt: no such file"),
])
def test_install_script_rejects_bad_cuda_and_constraints(tmp_path, args, message):
    prefix = tmp_path / "sise"
    r = subprocess.run(["bash", os.path.join(ROOT, "deploy", "edge", "install.sh"), "--prefix", str(prefix),
                        *args], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not prefix.exists()


def python312() -> str | None:
    """A Python 3.12 interpreter (the images' Python), or None."""
    pyenv = os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(pyenv))]
    for candidate in filter(None, candidates):
        r = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.stdout.strip() == "True":
            return candidate
    return None


def test_edge_install_script_with_the_cpu_image_constraints(tmp_path):
    """install.sh --constraints deploy/constraints-cpu.txt on Python 3.12: what the CPU image installs,
    every package at its pinned version (pip included), and a passing `inspector doctor`."""
    python = python312()
    if python is None:
        pytest.skip("no Python 3.12 here (the constraints are resolved for the images' Python 3.12)")
    prefix = tmp_path / "sise"
    constraints = os.path.join(ROOT, "deploy", "constraints-cpu.txt")
    r = subprocess.run(["bash", os.path.join(ROOT, "deploy", "edge", "install.sh"), "--prefix", str(prefix),
                        "--flavour", "cpu", "--constraints", constraints],
                       capture_output=True, text=True, timeout=900, check=False,
                       env={**os.environ, "PYTHON": python})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "doctor: all good" in r.stdout
    _, pins = read_pins("cpu")
    freeze = subprocess.run([str(prefix / "bin" / "pip"), "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    installed = dict(line.split("==") for line in freeze if "==" in line)
    installed = {normalize(n): v for n, v in installed.items() if normalize(n) != "sise-inspector"}
    assert installed == {n: v for n, v in pins.items() if n in installed}
    # not installed: the postgres extra's packages, and setuptools (it builds the wheel in an isolated env)
    assert set(pins) - set(installed) == {"psycopg", "psycopg-binary", "setuptools"}


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


# --- the images' constraints files ---------------------------------------------------------------------

def read_pins(flavour: str) -> tuple[str, dict[str, str]]:
    """(header comment, {normalized name: version}) of deploy/constraints-FLAVOUR.txt."""
    header, pins = [], {}
    with open(os.path.join(ROOT, "deploy", f"constraints-{flavour}.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                header.append(line)
                continue
            name, sep, version = line.strip().partition("==")
            assert sep and version and name == normalize(name) and name not in pins, line
            pins[name] = version
    return "".join(header), pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(extras: list[str]) -> list:
    """The project's requirements for these extras (packaging Requirement objects), without the extras
    that name the project itself (dev)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


@pytest.mark.parametrize("flavour,extras", [("cpu", ["cpu", "postgres"]),
                                            ("gpu", ["gpu", "postgres", "ray"])])
def test_constraints_pin_every_requirement_of_the_image(flavour, extras):
    """Every requirement of the extras the image can install is pinned, to a version the project allows;
    the build backend and pip are pinned too; the file says how to regenerate it."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    header, pins = read_pins(flavour)
    assert "deploy/regenerate-constraints.sh" in header and "Python 3.12 on Linux x86_64" in header
    assert list(pins) == sorted(pins)
    for req in project_requirements(extras):
        name = normalize(req.name)
        assert name in pins, f"{req} is not pinned in constraints-{flavour}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"
    if "postgres" in extras:  # psycopg[binary]: the extra's package, at psycopg's version
        assert pins["psycopg-binary"] == pins["psycopg"]
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        build_requires = [Requirement(r) for r in tomllib.load(f)["build-system"]["requires"]]
    for req in build_requires:
        assert req.specifier.contains(pins[normalize(req.name)])
    assert "pip" in pins
    if flavour == "gpu":
        assert Version(pins["onnxruntime-gpu"]) >= Version("1.27"), "the CUDA 13 image needs a CUDA 13 build"
        assert "onnxruntime" not in pins  # one of the two: they install the same package
        assert "aiohttp" in pins and "ray" in pins  # ray[default]: the dashboard, which KubeRay needs
    else:
        assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfile_installs_with_its_constraints(flavour):
    with open(os.path.join(ROOT, "deploy", f"Dockerfile.{flavour}"), encoding="utf-8") as f:
        text = f.read()
    constraints = f"deploy/constraints-{flavour}.txt"
    assert f"COPY {constraints} ./deploy/" in text
    installs = [c for c in re.split(r"&&|\nRUN ", text.replace("\\\n", " ")) if "pip install" in c]
    assert len(installs) == 2, installs
    for command in installs:
        assert f"-c {constraints}" in command, command
    assert f"--build-constraint {constraints}" in installs[1]
    if flavour == "gpu":
        assert '"onnxruntime-gpu>=1.27"' in installs[1]


def test_rayjob_image_and_cluster_match_the_constraints():
    """The RayJob names the Ray version the image has (KubeRay picks its health checks by it) and runs
    with token authentication."""
    import yaml

    _, pins = read_pins("gpu")
    with open(os.path.join(ROOT, "deploy", "ray", "rayjob.yaml"), encoding="utf-8") as f:
        job = yaml.safe_load(f)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pins["ray"]
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {"registry.example/sise-inspector:gpu-ray"}


def test_rayjob_entrypoint_takes_the_store_from_the_head(tmp_path):
    """KubeRay puts the entrypoint into a `bash -ce` command line in the submitter pod (`ray job submit
    ... -- ENTRYPOINT`), which has no SISE_STORE; `ray job submit` quotes its arguments (shlex.join) and
    the head runs the result with a shell (subprocess.Popen(..., shell=True)), in an environment that has
    SISE_STORE. Here the same three steps, with a stand-in inspector that prints its arguments."""
    import shlex

    import yaml

    with open(os.path.join(ROOT, "deploy", "ray", "rayjob.yaml"), encoding="utf-8") as f:
        entrypoint = yaml.safe_load(f)["spec"]["entrypoint"]
    submitter = subprocess.run(["bash", "-ce", f"printf '%s\\0' {entrypoint} ;"], env={"PATH": os.defpath},
                               capture_output=True, text=True, check=True, timeout=30)
    submitted = shlex.join(submitter.stdout.split("\0")[:-1])
    assert "SISE_STORE" in submitted and "psycopg" not in submitted  # the URL is not in the job's record
    fake = tmp_path / "inspector"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n")
    fake.chmod(0o755)
    url = "postgresql+psycopg://sise:a b?c@db-host/sise?sslmode=require"
    head = subprocess.run(submitted, shell=True, env={"PATH": f"{tmp_path}:{os.defpath}", "SISE_STORE": url},
                          capture_output=True, text=True, check=True, timeout=30)
    args = head.stdout.splitlines()
    assert args[:1] == ["audit"] and args[args.index("--store") + 1] == url, args
