"""Loading the exported model: contract, sampler graph, and on-the-fly export of a plain model
(cached beside it, keyed by the model's hash). Uses only the public functions of onnx_tools."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnx

import onnx_tools

from ...common.reading import check_regular, open_regular
from ...config import InspectorConfig
from ...errors import ModelContractError
from .memory import largest_tensor_bytes
from .weights import externalise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    path: str  # the exported model actually run
    source_path: str  # what the config named
    sha256: str  # of the exported model file
    contract: onnx_tools.Contract
    explain_bytes: bytes
    sampler_bytes: bytes
    scorer_bytes: bytes
    # the folder of the shared weights file the three graphs point into (inspector.weights); None: the
    # graphs carry their weights
    weights_folder: str | None = None
    largest_tensor_bytes: int = 0  # of one image's forward pass (inspector.memory)


def file_sha256(path: str, data_files: list[str] = ()) -> str:
    """SHA-256 of a model file, continued over the external data files it points into (the weights are
    part of what the model is; a model without them hashes as its file alone)."""
    h = hashlib.sha256()
    for name, what in [(path, "model file"), *((d, "model data file") for d in data_files)]:
        with open_regular(name, what=what) as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _load_proto(path: str) -> tuple[onnx.ModelProto, list[str]]:
    """The model's graph, its external tensors left in their files, and those files (checked)."""
    if not os.path.lexists(path):
        raise ModelContractError(f"model {path}: no such file (config key: model)")
    try:
        check_regular(path, what="model file")
    except OSError as e:
        raise ModelContractError(f"model {path}: cannot read it ({e.strerror}) (config key: model)") from e
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ModelContractError(f"model {path}: not a readable ONNX model ({e})") from e
    try:
        return proto, onnx_tools.data_files(proto, path)
    except onnx_tools.ExportError as e:
        raise ModelContractError(f"{e} (config key: model)") from e


def _input_shape(proto: onnx.ModelProto, path: str, cfg: InspectorConfig) -> tuple[int, ...] | None:
    """The export's ``input_shape`` for a model whose height or width is dynamic: ``preprocess.size``
    laid out as the input is (channels first when axis 1 holds the channel count, else last)."""
    try:
        dims = onnx_tools.dims_of(onnx_tools.find_image_input(proto))
    except onnx_tools.ExportError as e:
        raise ModelContractError(f"model {path}: {e}") from e
    if all(isinstance(d, int) for d in dims[1:]):
        return None
    if cfg.preprocess.size is None:
        raise ModelContractError(f"model {path} has dynamic image dims {dims}; set preprocess.size: [H, W] "
                                 "in the config (the size the line's images are explained at)")
    h, w = cfg.preprocess.size
    channels = 1 if cfg.preprocess.channel_order == "GRAY" else 3
    if cfg.export.layout == "NCHW" and isinstance(dims[1], int):
        return (1, dims[1], h, w)
    if cfg.export.layout == "NHWC" and isinstance(dims[3], int):
        return (1, h, w, dims[3])
    if dims[1] == channels or (isinstance(dims[1], int) and not isinstance(dims[3], int)):
        return (1, dims[1], h, w)
    if dims[3] == channels or isinstance(dims[3], int):
        return (1, h, w, dims[3])
    raise ModelContractError(f"model {path} has dynamic image dims {dims} including the channels; export it "
                             "with `python -m onnx_tools export --input-shape 1,3,H,W` (its own layout)")


def _export_cached(path: str, proto: onnx.ModelProto, data: list[str], cfg: InspectorConfig) -> str:
    """Export a plain model once per export setting; the result lives beside it as
    ``<stem>.<model hash>[.<options hash>][.<shape>].sise.onnx`` (a model exported with other
    ``export`` settings is another file, never the old one reused)."""
    digest = file_sha256(path, data)[:12]
    stem = os.path.splitext(path)[0]
    shape = _input_shape(proto, path, cfg)
    export = cfg.export
    options = {"score": export.score, "blocks": list(export.blocks or []), "layout": export.layout}
    if export.task != "classify":  # (a classifier's options keep the name they had before detectors)
        options.update(task=export.task, head=export.head)
    if export.extra_inputs:
        options.update(extra_inputs=export.extra_inputs)
    # the defaults keep the name caches had before options were part of it
    tag = "" if options == {"score": "softmax", "blocks": [], "layout": None} else \
        "." + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    out = f"{stem}.{digest}{tag}{'.' + 'x'.join(map(str, shape)) if shape else ''}.sise.onnx"
    if os.path.isfile(out):
        return out
    log.warning("model %s has no SISE contract; exporting it to %s (once)", path, out)
    blocks = list(cfg.export.blocks) if cfg.export.blocks else "auto"
    try:
        onnx_tools.export_file(path, out, score=cfg.export.score, blocks=blocks, input_shape=shape,
                               layout=cfg.export.layout, task=cfg.export.task, head=cfg.export.head,
                               extra_inputs=cfg.export.extra_inputs)
    except onnx_tools.ExportError as e:
        raise ModelContractError(f"model {path} has no SISE contract and exporting it failed: {e}. "
                                 "Run `python -m onnx_tools export` with the options it needs and point "
                                 "the config's model at the result") from e
    except OSError as e:
        raise ModelContractError(f"model {path}: cannot write the exported copy {out} ({e}); export it with "
                                 "`python -m onnx_tools export` and point the config's model "
                                 "at the result") from e
    return out


def _check_extra_inputs(contract: onnx_tools.Contract, cfg: InspectorConfig, path: str) -> None:
    """The values the config gives the model's other inputs are those its export wrote into the graph."""
    given, written = cfg.export.extra_inputs, contract.extra_inputs
    for name, value in given.items():
        if name not in written:
            raise ModelContractError(f"model {path} has no input '{name}' besides the image (its export "
                                     f"wrote {sorted(written) or 'none'}); remove export.extra_inputs.{name}")
        want = np.asarray(written[name]["value"], dtype=written[name]["dtype"])
        try:
            same = np.array_equal(np.broadcast_to(np.asarray(value, want.dtype), want.shape), want)
        except ValueError:
            same = False
        if not same:
            raise ModelContractError(
                f"model {path} was exported with input '{name}' = {json.dumps(written[name]['value'])}, but "
                f"export.extra_inputs.{name} is {json.dumps(value)}; point the config at the plain model (it "
                "is exported again with the config's value) or remove the key")


def load_model(cfg: InspectorConfig) -> LoadedModel:
    """The exported model for ``cfg`` (exporting a plain model first), its contract and sampler graph."""
    source = cfg.model
    proto, data = _load_proto(source)
    path = source
    if onnx_tools.read_contract(proto) is None:
        path = _export_cached(source, proto, data, cfg)
        del proto  # a large model's two protos at once would double the start-up peak
        proto, data = _load_proto(path)
    contract = onnx_tools.read_contract(proto)
    if contract is None:
        raise ModelContractError(f"model {path} has no SISE contract; run `python -m onnx_tools export` "
                                 "on the original model, or point the config at the plain model "
                                 "to export it on the fly")
    _check_extra_inputs(contract, cfg, path)
    sha256 = file_sha256(path, data)
    half = cfg.runtime.fp16
    folder = None
    if half:  # the float16 graphs carry converted copies of the weights, not the file's
        onnx_tools.load_into(proto, path)
    else:  # weights in the model's own data files are read from there, the rest from the shared file
        own = os.path.dirname(os.path.abspath(path)) if data else None
        folder = externalise(proto, path, sha256) or own
    try:
        sampler = onnx_tools.build_sampler(proto, fp16=half).SerializeToString()
        scorer = onnx_tools.build_mask_scorer(proto, fp16=half).SerializeToString()
    except onnx_tools.ExportError as e:
        raise ModelContractError(f"model {path}: {e} (config key: runtime.fp16)") from e
    return LoadedModel(path=path, source_path=source, sha256=sha256, contract=contract,
                       explain_bytes=proto.SerializeToString(), sampler_bytes=sampler, scorer_bytes=scorer,
                       weights_folder=folder,
                       largest_tensor_bytes=largest_tensor_bytes(proto, contract.input_shape,
                                                                 contract.output_name))
