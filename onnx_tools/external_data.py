"""Models whose weights live in external data files beside the ``.onnx`` (PyTorch's default export writes
``model.onnx`` + ``model.onnx.data``): reading them as shipped, and writing an exported model the same way.

ONNX's rule for a tensor's ``location``: a path relative to the folder of the model file, without ``..``
components; ``offset`` and ``length`` (optional) select its bytes. Anything else is refused naming the
tensor and the file.

Writing is atomic across the two files: the data goes to ``<model file name>.<sha256[:12]>.data`` (its
name is its content's hash, so a file of that name is always complete and the same), then the model that
points at it replaces the old one; the data file the replaced export pointed at is removed after (only
that one, and never one the input model reads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets

import onnx
from onnx import numpy_helper

from .errors import ExportError, ModelLoadError

log = logging.getLogger(__name__)

ALIGN = 4096  # each tensor starts on a page, so onnxruntime can map it instead of copying it
MIN_TENSOR_BYTES = 1024  # smaller tensors (shapes, scalars) stay in the graph
SPLIT_BYTES = 1 << 30  # a model with more weights than this is written split even if it came in one file
_DATA_NAME = re.compile(r"\.[0-9a-f]{12}\.data$")


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The initializers and tensor attributes of ``graph`` and of the subgraphs of its nodes (If, Loop)."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                tensors.append(a.t)
            elif a.type == onnx.AttributeProto.TENSORS:
                tensors.extend(a.tensors)
            elif a.type == onnx.AttributeProto.GRAPH:
                tensors.extend(_tensors(a.g))
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    tensors.extend(_tensors(g))
    return tensors


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors (initializers, Constant nodes, in subgraphs too) whose data lives in an external file."""
    return [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def data_files(model: onnx.ModelProto, model_path: str) -> list[str]:
    """The external data files ``model`` (read from ``model_path``) points into, each once, in the order
    first used, checked as :func:`_checked_span` checks them."""
    files: dict[str, None] = {}
    for t in external_tensors(model):
        files[_checked_span(t, model_path)[0]] = None
    return list(files)


def _checked_span(t: onnx.TensorProto, model_path: str) -> tuple[str, int, int]:
    """(file, offset, length) of an external tensor, after ONNX's rules and the file's size."""
    where = f"{model_path}: tensor '{t.name}'"
    fields = _entries(t)
    location = fields.get("location", "")
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts:
        raise ModelLoadError(f"{where} keeps its data at location '{location}', which ONNX does not allow (a "
                             "path relative to the model's folder, without '..'); re-save the model with "
                             "onnx.save(model, path, save_as_external_data=True)")
    folder = os.path.dirname(os.path.abspath(model_path))
    path = os.path.join(folder, *[p for p in parts if p not in ("", ".")])
    if os.path.islink(path):
        raise ModelLoadError(f"{where} keeps its data in {path}, a symbolic link, which ONNX does not "
                             "follow; copy the file it points to in its place")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{where} keeps its data in {path}, which "
                             f"{'is not a regular file' if os.path.exists(path) else 'does not exist'}; copy "
                             "the model's data files beside it (they travel with the .onnx file)")
    try:
        offset = int(fields.get("offset", "0"))
        count = 1
        for d in t.dims:
            count *= d
        expected = count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        length = int(fields.get("length", str(expected)))
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"{where}: unreadable external data fields {fields} ({e})") from e
    size = os.path.getsize(path)
    if offset < 0 or length != expected or offset + length > size:
        raise ModelLoadError(f"{where} needs bytes {offset}..{offset + length} of {path} ({expected} for its "
                             f"shape), but the file has {size}; the data file is truncated or belongs to "
                             "another model")
    return path, offset, length


def load_into(model: onnx.ModelProto, model_path: str) -> bool:
    """Read every external tensor's bytes into ``model`` (in place, one copy each). Returns whether the
    model had any."""
    tensors = external_tensors(model)
    for t in tensors:
        path, offset, length = _checked_span(t, model_path)
        with open(path, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return bool(tensors)


def point_at(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``t`` read its data from ``length`` bytes at ``offset`` of the file ``location`` (relative to
    its model's folder), in place; its inline data is dropped."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(field)
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def should_split(model: onnx.ModelProto, came_split: bool) -> bool:
    """Write an exported model split when its source was, or when its weights near protobuf's 2 GB limit;
    never when no tensor is large enough to leave the graph."""
    sizes = [len(t.raw_data) for t in model.graph.initializer]
    return any(n >= MIN_TENSOR_BYTES for n in sizes) and (came_split or sum(sizes) > SPLIT_BYTES)


def save_split(model: onnx.ModelProto, path: str, write_model) -> str:
    """Write ``model``'s tensors of at least MIN_TENSOR_BYTES to ``<name>.<sha256[:12]>.data`` beside
    ``path`` and the model pointing at them with ``write_model(model, path)`` (an atomic writer). The
    model is changed in place to point at the data file (as ``onnx.save_model`` does). Returns the data
    file's path."""
    folder, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.data.part")
    digest, spans, end = hashlib.sha256(), [], 0
    try:
        with open(tmp, "wb") as f:
            for t in model.graph.initializer:
                if t.data_type == onnx.TensorProto.STRING or t.data_location == onnx.TensorProto.EXTERNAL:
                    continue
                data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                if len(data) < MIN_TENSOR_BYTES:
                    continue
                start = -(-end // ALIGN) * ALIGN
                for chunk in (b"\0" * (start - end), data):
                    f.write(chunk)
                    digest.update(chunk)
                spans.append((t, start, len(data)))
                end = start + len(data)
            f.flush()
            os.fsync(f.fileno())
        name = f"{base}.{digest.hexdigest()[:12]}.data"
        os.replace(tmp, os.path.join(folder, name))
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ExportError(f"cannot write the model's data file in {folder} ({e.strerror or e})") from e
    for t, start, length in spans:
        point_at(t, name, start, length)
    write_model(model, path)
    return os.path.join(folder, name)


def written_by_earlier_export(path: str) -> set[str]:
    """The data files the model now at ``path`` points at that an export wrote for it
    (``<name>.<12 hex>.data`` beside it): what replacing it leaves unreferenced. Empty when there is no
    readable model there."""
    folder, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    try:
        earlier = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - nothing there, or not a model: nothing of ours to remove
        return set()
    found = set()
    for t in external_tensors(earlier):
        location = _entries(t).get("location", "")
        ours = location.startswith(base + ".") and _DATA_NAME.fullmatch(location[len(base):])
        if ours and "/" not in location:
            found.add(os.path.join(folder, location))
    return found


def remove(files: set[str]) -> None:
    """Remove data files no model points at any more (a failure is only logged)."""
    for name in sorted(files):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove the earlier data file %s (%s)", name, e.strerror)
