"""Reviewed parts as a dataset for retraining: ``images/<label>/`` per label the reviewers gave (their
newest verdict; inconclusive parts are left out) holding the original images, plus ``labels.csv`` with the
image hash, source path, model label, reviewer label, verdict, reviewer, time and comment. As a ZIP
download (the station) or a folder (`inspector station export`), written so that a half export never looks
like a whole one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator

from ..common.identity import FIELDS
from ..common.spreadsheet import csv_text
from ..errors import InspectorError
from ..store import Store, display_path
from ..store.schema import standing
from . import queries
from .files import original_bytes

CSV_FIELDS = (
    "file",
    "image_sha256",
    "source_path",
    "model_label",
    "reviewer_label",
    "verdict",
    "reviewer",
    "reviewed_at",
    "comment",
    "note",
    "serial",
    "line",
    "camera",
    "product",
    "tags",
)


MISSING = "original image not found (moved or deleted); not in the dataset"


def folder_names(labels) -> dict[str, str]:
    """A folder name per label: its letters and digits in any script (``割れ``, ``Einschlüsse``), other
    characters as ``_``; labels that would share a name (``a b``, ``a_b``) each get a hash of the label."""
    plain = {label: re.sub(r"[^\w.-]+", "_", label).strip("._") or "label" for label in labels}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        label: name if counts[name] == 1 else f"{name}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"
        for label, name in plain.items()
    }


def entries(store: Store) -> Iterator[tuple[str | None, bytes | None, dict]]:
    """(file name in the dataset or None, its bytes, its CSV row) per reviewed part."""
    rows = queries.reviewed_parts(store)
    folders = folder_names({row["review_label"] for row in rows})
    for row in rows:
        part = queries.part(store, row["id"])
        data = original_bytes(part)
        stem, ext = os.path.splitext(os.path.basename(row["source_path"]))
        arcname = None
        if data is not None:
            arcname = (
                f"images/{folders[row['review_label']]}/{row['image_sha256'][:16]}_"
                f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:48]}{ext.lower()}"
            )
        yield (
            arcname,
            data,
            {
                "file": arcname or "",
                "image_sha256": row["image_sha256"],
                "source_path": display_path(row["source_path"]),
                "model_label": row["prediction_name"],
                "reviewer_label": row["review_label"],
                "verdict": row["verdict"],
                "reviewer": row["reviewer"],
                "reviewed_at": row["created_at"].isoformat(),
                "comment": (standing(part["history"]) or {}).get("note") or "",
                "note": "" if data is not None else MISSING,
                **identity_cells(part["parts"]),
            },
        )


def identity_cells(arrivals: list[dict]) -> dict[str, str]:
    """The parts an image arrived as, in CSV cells: each field's distinct values joined by ``;`` (one
    value for the usual part that arrived once)."""
    cells = {}
    for name in (*FIELDS, "tags"):
        values = []
        for p in arrivals:
            for v in (p[name] or []) if name == "tags" else [p[name]]:
                if v and v not in values:
                    values.append(v)
        cells[name] = ";".join(values)
    return cells


def _csv(rows: list[dict]) -> bytes:
    return csv_text(CSV_FIELDS, rows).encode()


def dataset_zip(store: Store, top: str) -> Iterator[bytes]:
    """The dataset as a ZIP file, built in a temporary file first (so a store error never ends a download
    with a valid-looking partial ZIP), then streamed."""
    with tempfile.TemporaryFile() as tmp:
        rows = []
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for arcname, data, row in entries(store):
                if data is not None:
                    zf.writestr(f"{top}/{arcname}", data)
                rows.append(row)
            zf.writestr(f"{top}/labels.csv", _csv(rows))
        tmp.seek(0)
        while chunk := tmp.read(1 << 20):
            yield chunk


def export_folder(store: Store, out: str) -> tuple[int, int]:
    """Write the dataset into the new folder ``out``; returns (images written, parts without an image)."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise InspectorError(f"DATASET_DIR {display_path(out)} exists; export into a new folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        rows, written = [], 0
        for arcname, data, row in entries(store):
            if data is not None:
                os.makedirs(os.path.join(work, os.path.dirname(arcname)), exist_ok=True)
                with open(os.path.join(work, arcname), "wb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
                written += 1
            rows.append(row)
        with open(os.path.join(work, "labels.csv"), "wb") as f:
            f.write(_csv(rows))
            os.fsync(f.fileno())
        os.chmod(work, 0o777 & ~_umask())
        os.rename(work, out)  # the folder appears whole, or not at all
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return written, len(rows) - written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
