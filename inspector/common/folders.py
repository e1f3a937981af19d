"""Checks on the folders a command is given, so that no command reads its own outputs or writes into
a file."""

from __future__ import annotations

import os

from ..errors import InspectorError


def is_inside(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies under it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(option: str, folder: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InspectorError(f"{option} {folder}: is a file; give a folder (created if missing)")
