"""The package's one way to write a file: complete or not at all, never half-written.

Data goes to a hidden ``.<name>.<host>-<pid>.<random>.part`` file beside the target, is flushed to disk,
and is renamed over the target; the folder is synced so the rename survives a power cut. The temporary file is
created with mode 0666 and the kernel applies the umask (0644 under the usual 022), unlike ``mkstemp``'s
0600.
On any failure (disk full, permissions, a signal) every temporary file is removed and the error raised.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket

PART_SUFFIX = ".part"


# whose temporary files these are: machine and process (an output folder may be shared over the network)
_WRITER = f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:24]}-{os.getpid()}"


def _temp_name(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}.{_WRITER}.{secrets.token_hex(4)}{PART_SUFFIX}")


@contextlib.contextmanager
def _temp_file(final: str):
    """(temporary name, binary file) beside ``final``; flushed to disk when the block ends, removed if it
    fails."""
    tmp = _temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield tmp, f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
        raise


def _write_temp(final: str, data: bytes) -> str:
    with _temp_file(final) as (tmp, f):
        f.write(data)
    return tmp


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sync_folder(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` atomically."""
    write_group({path: data})


@contextlib.contextmanager
def open_atomic(path: str):
    """A binary file object for writing ``path`` piece by piece (data too large to hold twice in memory);
    ``path`` appears, complete and synced, only when the block ends without an error."""
    with _temp_file(path) as (tmp, f):
        yield f
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    sync_folder(os.path.dirname(path))


def write_group(files: dict[str, bytes | str]) -> None:
    """Write several files so that either all of them are complete or none was changed by this call
    (short of a crash between two renames, which leaves complete files only)."""
    commit_group(prepare_group(files))


def prepare_group(files: dict[str, bytes | str]) -> list[tuple[str, str]]:
    """Write every file to its temporary name, flushed to disk; returns (temporary, final) pairs for
    :func:`commit_group` or :func:`discard_group`. On failure nothing is left behind."""
    temps: list[tuple[str, str]] = []
    try:
        for final, data in files.items():
            payload = data.encode("utf-8") if isinstance(data, str) else data
            temps.append((_write_temp(final, payload), final))
    except BaseException:
        discard_group(temps)
        raise
    return temps


def commit_group(temps: list[tuple[str, str]]) -> None:
    """Rename prepared files into place and sync their folders."""
    try:
        for tmp, final in temps:
            os.replace(tmp, final)
    except BaseException:
        discard_group(temps)
        raise
    for folder in {os.path.dirname(final) for _, final in temps}:
        sync_folder(folder)


def discard_group(temps: list[tuple[str, str]]) -> None:
    for tmp, _ in temps:
        _remove(tmp)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs; one that exited but was not yet reaped by its
    parent (a zombie: e.g. a Ray worker whose raylet is gone, under a container's init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # no /proc (not Linux), or the process just went
        return False
    return stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X")


def remove_stale_parts(folder: str) -> int:
    """Delete the temporary files that killed writers of this machine left in ``folder``; those of live
    processes (a second audit writing into the same folder) and of other machines are kept. Returns how
    many were removed."""
    host = _WRITER.rsplit("-", 1)[0]
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            parts = name.rsplit(".", 3)
            if not (name.startswith(".") and name.endswith(PART_SUFFIX) and len(parts) == 4):
                continue
            writer_host, _, pid = parts[1].rpartition("-")
            if writer_host == host and pid.isdigit() and not process_alive(int(pid)):
                _remove(os.path.join(folder, name))
                removed += 1
    return removed
