"""Files that are not regular files (devices, FIFOs, sockets) and files too large to be an image: every
command refuses them before reading, in one line naming them, and no read can block a process or make it
ignore SIGTERM. The commands run as real subprocesses under a 3 GB address-space limit, so that a command
that reads ``/dev/zero`` to the end fails the test instead of the machine."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time

import cv2
import pytest
import yaml

from inspector.common.reading import NotReadable, image_limit, read_regular
from inspector.demo import example_dir
from inspector.quality.synthetic import sample

CONFIG = os.path.join(example_dir(), "config.yaml")
MEMORY_LIMIT = 3 * 2**30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def inspector(*args, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=False, preexec_fn=_limit_memory)


def png() -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(sample(61, 0).image, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
def specials(tmp_path):
    """A FIFO with no writer, a UNIX socket and a 4 GiB sparse file, each named like an image."""
    os.mkfifo(tmp_path / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "socket.png"))
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(4 * 2**30)  # no disk used
    yield tmp_path
    sock.close()


def test_explain_refuses_devices_fifos_sockets_and_huge_files_in_one_line_each(specials, tmp_path):
    (tmp_path / "good.png").write_bytes(png())
    start = time.monotonic()
    r = inspector("explain", "-c", CONFIG, "/dev/zero", specials / "fifo.png", specials / "socket.png",
                  specials / "huge.png", tmp_path / "good.png", "--out", tmp_path / "out")
    assert time.monotonic() - start < 100
    assert r.returncode == 1, r.stderr  # the good image is explained, the four are failures
    assert "wrote 1 explanation(s)" in r.stdout
    assert "4 image(s) failed" in r.stderr and "MemoryError" not in r.stderr and "Traceback" not in r.stderr
    lines = [line.strip() for line in r.stderr.splitlines()]
    expected = {"/dev/zero": "a character device, not a regular file",
                str(specials / "fifo.png"): "a FIFO (named pipe), not a regular file",
                str(specials / "socket.png"): "a socket, not a regular file",
                str(specials / "huge.png"): f"{4 * 2**30} bytes, over the limit"}
    for path, words in expected.items():
        assert any(line.startswith(f"{path}: cannot read the file (") and words in line for line in lines), (
            path, r.stderr)


def test_a_fifo_or_device_as_config_manifest_or_roi_is_one_error_line(specials, tmp_path):
    r = inspector("explain", "-c", specials / "fifo.png", tmp_path / "x.png", "--out", tmp_path / "o1",
                  timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "FIFO" in r.stderr, r.stderr
    os.mkfifo(tmp_path / "manifest.csv")
    r = inspector("audit", "-c", CONFIG, tmp_path / "manifest.csv", "--out", tmp_path / "o2", timeout=60)
    assert r.returncode == 2 and "FIFO" in r.stderr and "manifest" in r.stderr, r.stderr
    manifest = tmp_path / "list.csv"
    manifest.write_text("image\n/dev/zero\nfifo.png\n")  # rows naming special files: failed images
    r = inspector("audit", "-c", CONFIG, manifest, "--out", tmp_path / "o3")
    assert r.returncode == 1 and "2 image(s) failed" in r.stderr, r.stderr
    assert "a character device, not a regular file" in r.stderr and "a FIFO (named pipe)" in r.stderr
    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw.update(model=os.path.join(example_dir(), raw["model"]), roi={"mask": str(specials / "fifo.png")})
    config = tmp_path / "roi.yaml"
    config.write_text(yaml.safe_dump(raw))
    r = inspector("explain", "-c", config, tmp_path / "x.png", "--out", tmp_path / "o4", timeout=60)
    assert r.returncode == 2 and "roi.mask" in r.stderr and "FIFO" in r.stderr, r.stderr


def test_read_regular_never_reads_past_its_limit(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 1000)
    assert read_regular(path, 1000) == b"x" * 1000
    with pytest.raises(NotReadable, match="1000 bytes, over the limit of 999 bytes"):
        read_regular(path, 999)
    assert image_limit(1) == 8 + 64 * 2**20


def test_a_second_sigterm_ends_a_process_blocked_in_a_read(tmp_path):
    """The first SIGTERM asks the run to finish its image; a second one ends it at once, even in the
    middle of a read that would never return."""
    script = ("import sys\nfrom inspector.common.stop import Stop\nStop().install()\n"
              "print('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first only asks
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) != 0
        assert "stopped at once by a second SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
