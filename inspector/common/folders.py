"""Checks on the folders a command is given, so that no command reads its own outputs or writes into
a file."""

from __future__ import annotations

import os

from ..errors import InspectorError

# A folder holding a file of this name is never audited as parts (with what lies under it): the
# synthetic data set marks its ground-truth masks so; a plant may mark reference images the same way.
SKIP_MARKER = ".sise-skip"


def skipped(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, SKIP_MARKER))


def is_inside(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies under it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(option: str, folder: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InspectorError(f"{option} {folder}: is a file; give a folder (created if missing)")
