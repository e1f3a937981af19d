"""Real file systems for the tests of what happens when a folder is full or read-only (root only: CI runs
as root; elsewhere such a test is skipped, and on CI it fails instead)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(folder, size: str):
    """A small tmpfs mounted on ``folder`` for the block."""
    os.makedirs(folder, exist_ok=True)
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
        check=False).returncode == 0
    if not mounted:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs for this test")
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def make_read_only(folder) -> None:
    """Remount the tmpfs on ``folder`` read-only: writes fail with EROFS, even for root."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
