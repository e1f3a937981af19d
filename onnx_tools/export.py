"""The export step: load -> analyse (input, output, blocks) -> passes -> check -> save.

Public functions: :func:`analyse`, :func:`export_model`, :func:`export_file`.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.version_converter

from . import ceil_pools, external_data, precision, strided_views
from . import contract as C
from . import detection as D
from . import extra_inputs as extra_inputs_module
from .blocks import channels_first_views, channels_last, check_explicit_blocks, discover_blocks
from .errors import AlreadyExportedError, ExportError, ModelInputError
from .graph import (
    DEFAULT_DOMAINS,
    GraphIndex,
    check_aligned,
    check_topological,
    default_opset,
    dims_of,
    find_image_input,
    read_model,
    unknown_dims_as_symbols,
)
from .model_io import LAYOUTS, ModelIO, analysis_copy, detect_layout, find_class_output, fix_input_shape
from .passes import AddDetectionHead, AddGradients, ExportState, ExposeBlocks, PassManager
from .rebatch import rebatch
from .scores import score_op

log = logging.getLogger(__name__)
OLD_OPSET_TARGET = 9  # the oldest opset the tests cover with real model files


@dataclass
class Analysis:
    """The model with its image input fixed, its batch-1 index, interface and chosen blocks."""

    model: onnx.ModelProto
    index: GraphIndex
    io: ModelIO
    blocks: list[str]
    head: D.DetectionHead | None = None  # a detector's head (io.output_name is its scores tensor)


@dataclass
class ExportResult:
    model: onnx.ModelProto
    contract: C.Contract
    seconds: float
    passes: dict[str, bool] = field(default_factory=dict)  # pass name -> whether it modified the model


def _refuse_exported(model: onnx.ModelProto) -> None:
    existing = C.read_contract(model)
    names = {vi.name for vi in model.graph.input} | {vi.name for vi in model.graph.output}
    if existing is not None or C.TARGET_INPUT in names or any(n.startswith("sise/") for n in names):
        raise AlreadyExportedError("the model is already a SISE export (it has the sise.contract metadata or "
                                   "sise_* inputs/outputs); use it as it is, or export the original model")


def _refuse_training_mode(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and (any(node.output[1:]) or any(
                a.name == "training_mode" and a.i for a in node.attribute)):
            raise ModelInputError(
                f"node '{node.name or node.output[0]}' (BatchNormalization) was exported in training mode: "
                "it normalises with the batch's own statistics, so the masked images of a batch would change "
                "each other's scores; export the model in eval mode (torch: model.eval() and "
                "torch.onnx.export(..., training=torch.onnx.TrainingMode.EVAL))")


def _quantizes(op_type: str) -> bool:
    """Integer arithmetic on values computed from the image (QuantizeLinear/DequantizeLinear pairs, a QDQ
    model, are differentiated with the straight-through gradient instead)."""
    return op_type.startswith(("QLinear", "DynamicQuantize")) or op_type.endswith("Integer")


def _refuse_unreadable(model: onnx.ModelProto) -> None:
    """Nodes on values from the image that the export cannot read: ops outside the standard domains
    (onnxruntime's fused or com.microsoft ops: no shape inference, no gradient) and integer arithmetic
    (QOperator format, dynamic quantization: no class-score gradients). QDQ models and quantized weights
    alone are read."""
    initializers = {t.name for t in model.graph.initializer}
    seen = {vi.name for vi in model.graph.input if vi.name not in initializers}
    for node in model.graph.node:
        if not any(i in seen for i in node.input):
            continue
        name = node.name or node.output[0]
        if node.domain not in DEFAULT_DOMAINS and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            raise ModelInputError(
                f"node '{name}' ({node.domain}.{node.op_type}) is onnxruntime's contrib quantizer, which the "
                "export does not read; quantize without extra_options UseQDQContribOps (16-bit and 4-bit "
                "types need opset 21 then), so that the pairs are standard ONNX")
        if node.domain not in DEFAULT_DOMAINS:
            raise ModelInputError(
                f"node '{name}' ({node.domain}.{node.op_type}) is outside the standard ONNX domain: the "
                "export can neither infer its shapes nor differentiate it; com.microsoft ops come from "
                "onnxruntime's graph optimisations (export the model as saved before them) or its QOperator "
                "quantization (quantize in QDQ format instead)")
        if _quantizes(node.op_type):
            raise ModelInputError(
                f"node '{name}' ({node.op_type}) computes in integer arithmetic on values from the image, "
                "where the class-score gradients SISE needs do not exist; export the float model, or "
                "quantize it in QDQ format (onnxruntime: quantize_static(..., "
                "quant_format=QuantFormat.QDQ)), whose quantize/dequantize pairs are read")
        seen.update(node.output)


def _upgrade_old_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opsets before 8 lack ops the gradients are built from (Expand): such a model is read at opset 9."""
    opset = default_opset(model)
    if opset >= 8:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, OLD_OPSET_TARGET)
    except Exception as e:
        raise ModelInputError(f"the model is at opset {opset}, older than the export supports (8), and "
                              f"onnx's version converter cannot bring it to opset {OLD_OPSET_TARGET} ({e}); "
                              "re-export it at a newer opset") from e
    log.info("the model's opset %d is read as opset %d (onnx.version_converter)", opset, OLD_OPSET_TARGET)
    return upgraded


def _check_computation(a: Analysis, score: str) -> None:
    """What the engine cannot run or explain: blocks not in float32, a softmax over a single class."""
    for tensor in a.blocks:
        dtype = a.index.info[tensor].np_dtype
        if dtype != np.float32:
            raise ModelInputError(
                f"block '{tensor}' is {dtype.name}: the engine computes in float32 (and in float16 on a GPU "
                "with runtime.fp16: true); export the model in float32 (torch: model.float() before "
                "torch.onnx.export)")
    if a.head is None and a.io.num_classes == 1 and score == "softmax":
        raise ModelInputError(
            f"the class output '{a.io.output_name}' has one class: a softmax over it is always 1 and "
            "explains nothing; for a binary classifier's logit use --score sigmoid (export.score in an "
            "inspector config), or --score logit")


def analyse(model: onnx.ModelProto, *, blocks: str | list[str] = "auto",
            input_shape: tuple[int, ...] | None = None, output: str | None = None,
            layout: str | None = None, task: str = "classify", head: str = "auto") -> Analysis:
    """Find the image input (and its layout, unless stated), the class output (for ``task`` "detect":
    the detection head, in convention ``head`` or the one its outputs match) and the block tensors
    (automatic or explicit)."""
    if layout is not None and layout not in LAYOUTS:
        raise ModelInputError(f"--layout {layout}: use NCHW or NHWC")
    if task not in C.TASKS:
        raise ModelInputError(f"--task {task}: use one of {', '.join(C.TASKS)}")
    _refuse_unreadable(model)
    if task == "detect":
        D.refuse_two_stage(model)
    check_topological(model)
    model = fix_input_shape(model, input_shape)  # a copy: changed in place below
    index = GraphIndex(analysis_copy(model))
    check_aligned(model, index)  # the passes read node positions in the copy and write them in the model
    floored = ceil_pools.as_run(model, index)
    if floored:
        log.info("ceil-mode pools whose last window onnxruntime drops, read with ceil_mode=0: %s",
                 ", ".join(floored))
        index = GraphIndex(analysis_copy(model))
    image = find_image_input(model)
    found = D.find_head(index, head, output) if task == "detect" else None
    if found is not None and found.convention in D.SPLIT:  # its tensors joined into one, read from there
        model = D.join_head(model, found, default_opset(model))
        index = GraphIndex(analysis_copy(model))
        check_aligned(model, index)
    output_name, num_classes = (found.scores_tensor, found.num_classes) if found else \
        find_class_output(index, output)
    io = ModelIO(input_name=image.name, layout=layout or detect_layout(index, image.name),
                 input_dims=tuple(dims_of(image)), output_name=output_name, num_classes=num_classes)
    if blocks == "auto" or blocks is None:
        chosen = discover_blocks(index, io.input_name, io.output_name)
        nhwc = channels_last(index, chosen)
        if nhwc:  # read through inserted transposes to NCHW; the copy is made again to see them
            views = channels_first_views(model, nhwc)
            index = GraphIndex(analysis_copy(model))
            check_aligned(model, index)
            chosen = [views.get(t, t) for t in chosen]
            log.info("channels-last blocks read through a transpose to channels-first: %s", ", ".join(nhwc))
    else:
        chosen = check_explicit_blocks(index, list(blocks), io.input_name, io.output_name,
                                       image_hw=_spatial(io.input_dims, io.layout))
    return Analysis(model=model, index=index, io=io, blocks=chosen, head=found)


def _spatial(dims, layout: str) -> tuple[int, int] | None:
    hw = dims[2:4] if layout == "NCHW" else dims[1:3]
    return tuple(hw) if all(isinstance(d, int) for d in hw) else None


def export_model(model: onnx.ModelProto, *, blocks: str | list[str] = "auto", score: str = "softmax",
                 input_shape: tuple[int, ...] | None = None, output: str | None = None,
                 layout: str | None = None, keep_batch: bool = False, check: bool = True,
                 task: str = "classify", head: str = "auto",
                 extra_inputs: dict | None = None) -> ExportResult:
    """Return a rewritten copy of ``model`` carrying block activations, gradients and the contract.

    Args:
        model: an ONNX classifier with one image input (NCHW or NHWC) and a [N, K] class output; or, with
            ``task`` "detect", a one-stage detector (see :mod:`onnx_tools.detection`).
        blocks: "auto" or tensor names (ordered shallow to deep in the result).
        score: psi applied to the class output: softmax | sigmoid | logit | identity (a detector's score
            is its canonical head's objectness * class probability: ``score`` does not apply).
        task: "classify" or "detect".
        head: a detector's head convention (:data:`onnx_tools.detection.CONVENTIONS`) or "auto".
        input_shape: the image input's dims, required when its spatial dims are dynamic.
        output: name of the class output when the model has several candidates.
        layout: "NCHW" or "NHWC" of the image input; None: found from the graph.
        keep_batch: keep a fixed batch of 1 (by default it is freed when that is shown safe, see
            :mod:`onnx_tools.rebatch`).
        extra_inputs: a constant value for each input besides the image, written into the graph
            (:mod:`onnx_tools.extra_inputs`); an input left without one is refused.
        check: run ``onnx.checker`` with full shape checking on the result.
    """
    start = time.perf_counter()
    if score not in C.SCORE_KINDS:
        raise ModelInputError(f"--score '{score}' is not one of {', '.join(C.SCORE_KINDS)}")
    _refuse_exported(model)
    _refuse_training_mode(model)
    _refuse_unreadable(model)
    model = _upgrade_old_opset(copy.deepcopy(model))  # never change the caller's model
    if precision.as_float32(model):
        log.info("the model's float16/bfloat16 weights and types are read in float32 (exact; the engine "
                 "runs float16 itself with runtime.fp16)")
    unknown = unknown_dims_as_symbols(model)
    if unknown:
        log.info("dims written as -1 or 0 read as dynamic: %s", ", ".join(unknown))
    baked = extra_inputs_module.bake(model, dict(extra_inputs or {}))
    views = strided_views.as_reshapes(model)
    if views:
        log.info("as_strided views (a Gather counting a flattened tensor in order) read as Reshapes: %s",
                 ", ".join(views))
    if not keep_batch:
        model = fix_input_shape(model, input_shape)
        freed = rebatch(model)
        model = freed.model
        (log.info if freed.changed or "free already" in freed.note else log.warning)("%s", freed.note)
    a = analyse(model, blocks=blocks, input_shape=input_shape, output=output, layout=layout, task=task,
                head=head)
    if a.head is not None:
        score = "identity"  # a detection's score: the canonical head's objectness * class probability
    _check_computation(a, score)
    out = a.model  # already a copy (fix_input_shape deep-copies)
    producer = a.index.producer.get(a.io.output_name)
    last_op = a.index.nodes[producer].op_type if producer is not None else None
    scoring = {op for op in C.SCORE_OPS.values() if op}
    if a.head is None and score_op(score) is not None and last_op in scoring:
        log.warning("the class output '%s' is already produced by %s; --score identity is probably meant",
                    a.io.output_name, last_op)
    batch_dim = a.io.input_dims[0] if a.io.input_dims[0] is not None else "N"
    state = ExportState(index=a.index, blocks=tuple(a.blocks), batch_dim=batch_dim)
    # ExposeBlocks renames the block tensors; its precondition (the gradient outputs exist) keeps it last
    passes = PassManager([AddGradients(logits=a.io.output_name, num_classes=a.io.num_classes, score=score,
                                       head=a.head),
                          *([AddDetectionHead(a.head)] if a.head is not None else []),
                          ExposeBlocks()])
    run = passes(out, state)
    out = run.model
    infos = tuple(C.BlockInfo(index=i, tensor=t, shape=tuple(a.index.shape(t)), act_output=C.act_output(i),
                              grad_output=C.grad_output(i), range_output=C.range_output(i))
                  for i, t in enumerate(a.blocks))  # the names the passes' postconditions checked
    contract = C.Contract(input_name=a.io.input_name, input_layout=a.io.layout, input_shape=a.io.input_dims,
                          output_name=a.io.output_name, num_classes=a.io.num_classes, score=score,
                          blocks=infos, source_opset=default_opset(model),
                          task="detect" if a.head is not None else "classify", head=a.head,
                          extra_inputs=baked)
    C.write_contract(out, contract)
    if check:
        try:
            onnx.checker.check_model(out, full_check=True)
        except Exception as e:
            raise ExportError(f"internal error: the rewritten model fails onnx.checker ({e}); "
                              "please report it") from e
    return ExportResult(model=out, contract=contract, seconds=time.perf_counter() - start,
                        passes=run.modified_by)


def export_file(in_path: str | os.PathLike, out_path: str | os.PathLike, **options) -> ExportResult:
    """Export ``in_path`` to ``out_path`` atomically: nothing is written unless the export succeeds,
    and ``in_path`` is never modified. A model that came with external data files (or has over 1 GB of
    weights) is written the same way: ``out_path`` and ``<out_path>.<sha256[:12]>.data`` beside it, which
    ``result.model`` then points at (:mod:`onnx_tools.external_data`)."""
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if os.path.abspath(in_path) == os.path.abspath(out_path) or (
            os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path)):
        raise ModelInputError(f"output path {out_path} is the input model; choose another -o path "
                              "(the input is never overwritten)")
    check_output_path(out_path)
    model, data_files = read_model(in_path)
    if any(os.path.realpath(out_path) == os.path.realpath(d) for d in data_files):
        raise ModelInputError(f"output path {out_path} is a data file of the input model; choose another -o "
                              "path (the input is never overwritten)")
    try:
        result = export_model(model, **options)
    except ExportError as e:
        raise type(e)(f"{in_path}: {e}") from e
    del model  # its weights: the export's copy is the one written
    earlier = external_data.written_by_earlier_export(out_path)
    written = set()
    if external_data.should_split(result.model, bool(data_files)):
        written.add(external_data.save_split(result.model, out_path, save_atomic))
    else:
        save_atomic(result.model, out_path)
    external_data.remove({f for f in earlier if os.path.realpath(f) not in
                          {os.path.realpath(k) for k in (*written, *data_files)}})
    return result


def check_output_path(path: str) -> None:
    """Refuse, before any work, an output path that is a folder or lies in a folder that does not exist."""
    if os.path.isdir(path):
        raise ExportError(f"output path {path} is a folder; give a file path with -o, e.g. "
                          f"{os.path.join(path, 'model.sise.onnx')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"output folder {folder} does not exist; create it or choose another -o path")


def save_atomic(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to a temporary file beside ``path`` and rename it into place."""
    check_output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".sise-export-{os.getpid()}-{secrets.token_hex(4)}.onnx.part")
    try:  # mode 0666 less the umask (mkstemp's 0600 would hide the model from a service user)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise ExportError(f"cannot write to output folder {folder} ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
