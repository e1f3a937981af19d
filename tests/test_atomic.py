"""inspector.common.atomic, the package's one file writer: complete or untouched, umask modes, no
leftovers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from inspector.common import atomic


def test_a_failed_group_leaves_the_old_files_and_no_temporaries(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    real = atomic._write_temp
    calls = {"n": 0}

    def second_fails(final, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final)
        return real(final, data)
    monkeypatch.setattr(atomic, "_write_temp", second_fails)
    with pytest.raises(OSError):
        atomic.write_group({str(tmp_path / "a.txt"): "new a", str(tmp_path / "b.txt"): "new b"})
    assert sorted(os.listdir(tmp_path)) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_atomic(str(tmp_path / "x"), b"1")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "x").st_mode & 0o777 == 0o640


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = atomic._WRITER.rsplit("-", 1)[0]
    dead = tmp_path / f".x.png.{host}-{proc.pid}.0a0b.part"
    live = tmp_path / f".y.png.{host}-{os.getpid()}.0c0d.part"
    elsewhere = tmp_path / f".w.png.other-machine-{proc.pid}.0e0f.part"  # another machine's writer
    odd = [tmp_path / ".z.png.part", tmp_path / ".part"]  # not named by this module
    for path in (dead, live, elsewhere, *odd):
        path.write_bytes(b"")
    (tmp_path / "keep.png").write_bytes(b"")
    assert atomic.remove_stale_parts(str(tmp_path)) == 1
    kept = [live.name, elsewhere.name, *(p.name for p in odd), "keep.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
