"""Reading an input file: only a regular file, never more than a bound, never waiting.

Every file the commands read (images, configs, models, ROI masks, manifests, the station's originals)
goes through :func:`read_regular`: the file is opened without blocking (a FIFO with no writer would
otherwise block the open itself), checked to be a regular file on the open descriptor (no race between
the check and the read), its size checked against the bound before a byte is read, and read to at most
the bound (a file that grows while it is read cannot take more).
"""

from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))
# never waiting: a FIFO without a writer would block a plain open()
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotReadable(OSError):
    """Not a regular file, or larger than the bound: ``strerror`` says which, in words for a user."""


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def image_limit(max_pixels: int) -> int:
    """The most bytes an image file may have: 8 bytes for each pixel ``preprocess.max_pixels`` allows
    (16-bit RGBA without compression) and 64 MiB of headers and metadata."""
    return max_pixels * 8 + 64 * 2**20


IMAGE_LIMIT_HINT = "raise preprocess.max_pixels (8 bytes a pixel are allowed) or downscale the image"
CONFIG_LIMIT = 2**20
MANIFEST_LIMIT = 2**30
MODEL_LIMIT = 2**32
ARTIFACT_LIMIT = 2**33  # a result's own files (npz, overlay) copied by a merge


def open_regular(path: str | bytes | os.PathLike, *, what: str = "file"):
    """A binary file object for the regular file ``path``, opened without waiting (refused otherwise).

    Raises:
        NotReadable: a folder, device, FIFO or socket. OSError: the file cannot be opened.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:  # a socket cannot be opened at all (ENXIO): say what it is
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise e from None
        if not stat.S_ISREG(mode):
            raise NotReadable(0, f"{kind_of(mode)}, not a regular file; only {what}s are read", path) from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(0, f"{kind_of(st.st_mode)}, not a regular file; only {what}s are read", path)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0)


def read_regular(path: str | bytes | os.PathLike, limit: int, *, what: str = "file",
                 limit_hint: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises:
        NotReadable: a folder, device, FIFO or socket, or a file over ``limit`` bytes (``limit_hint``:
            how to raise the bound, appended to the message).
        OSError: the file cannot be opened or read (missing, permissions, I/O error).
    """
    with open_regular(path, what=what) as f:
        fd = f.fileno()
        st = os.fstat(fd)
        if st.st_size > limit:
            raise NotReadable(0, f"{st.st_size} bytes, over the limit of {limit} bytes for {_a(what)}"
                              + (f"; {limit_hint}" if limit_hint else ""), path)
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise NotReadable(0, f"grew past the limit of {limit} bytes for {_a(what)} while it was read"
                          + (f"; {limit_hint}" if limit_hint else ""), path)
    return data


def check_regular(path: str | bytes | os.PathLike, *, what: str = "file") -> None:
    """Refuse anything but a regular file before a library opens ``path`` itself (a model's weights
    file); follows symbolic links, as opening would.

    Raises:
        NotReadable: a folder, device, FIFO or socket. OSError: no such file.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotReadable(0, f"{kind_of(st.st_mode)}, not a regular file; only {what}s are read", path)
