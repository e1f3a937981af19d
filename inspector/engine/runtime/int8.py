"""An int8 copy of the model's forward part for the sampler (``runtime.sampler_precision: int8``).

The sampler needs only the scores of the masked images, so its forward passes may run in int8 while the
explain model (activations and gradients) stays float32. The copy is onnxruntime's static QDQ quantization
(uint8 activations, int8 weights per output channel, ranges from the calibration samples' minimum and
maximum), which the CPU provider fuses into integer kernels (VNNI, AMX). Before it is used it is checked:
on samples it was not calibrated on, its target-class scores must follow float32's (:data:`MIN_AGREEMENT`,
or every score within :data:`TOLERANCE`). A copy that falls short is tried again with its first 1, 2, 4, ...
weighted layers in float32 (up to half of them); one that still falls short is refused, and the engine
keeps float32.

The outcome, refusal included, is cached beside the exported model as
``<stem>.<model sha256[:12]>.<calibration sha256[:12]>.int8.onnx`` (complete or not at all), so a start
with the same model and calibration set quantizes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnx_tools import scores_of

from ...common.atomic import open_atomic, remove_stale_parts

log = logging.getLogger(__name__)

# what the copy is; part of the calibration hash, so a changed recipe makes a new cache file
RECIPE = "qdq u8 activations, s8 per-channel weights, minmax ranges, v2"
MIN_AGREEMENT = 0.98  # Pearson r of int8 against float32 target scores on the check samples
TOLERANCE = 0.02  # ... or every check score within this of float32's (scores with too little spread for r)
WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
BATCH = 16  # calibration samples per run
KEY = "sise.int8"  # the metadata_props entry that holds the check's outcome


@dataclass(frozen=True)
class Int8Forward:
    """A quantized forward graph and how it compared with float32 on the check samples."""

    model: onnx.ModelProto | None  # None: refused (float32 is kept)
    agreement: float  # Pearson r of the target scores, int8 against float32
    largest_difference: float  # the largest |score difference|
    float_layers: tuple[str, ...] = ()  # weighted nodes kept in float32

    @property
    def accepted(self) -> bool:
        return self.model is not None

    def describe(self) -> str:
        kept = f", layers {', '.join(self.float_layers)} kept in float32" if self.float_layers else ""
        return (f"scores r = {self.agreement:.4f} and largest difference {self.largest_difference:.4f} "
                f"against float32 on samples it was not calibrated on{kept}")


def cache_path(model_path: str, model_sha256: str, calibration_sha256: str) -> str:
    stem = model_path.removesuffix(".onnx").removesuffix(".sise")
    return f"{stem}.{model_sha256[:12]}.{calibration_sha256[:12]}.int8.onnx"


def read_cached(path: str) -> Int8Forward | None:
    """The cached outcome at ``path``; None when there is none or it cannot be read (a truncated or
    foreign file is said in the log and built again)."""
    if not os.path.exists(path):
        return None
    try:
        model = onnx.load(path)
        outcome = json.loads({p.key: p.value for p in model.metadata_props}[KEY])
        result = Int8Forward(model=model if outcome["accepted"] else None, agreement=outcome["agreement"],
                             largest_difference=outcome["largest_difference"],
                             float_layers=tuple(outcome["float_layers"]))
    except Exception as e:  # noqa: BLE001 - any unreadable file is rebuilt, whatever broke it
        log.warning("the cached int8 sampler %s cannot be read (%s); quantizing again", path,
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return None
    return result


def write_cached(path: str, result: Int8Forward, forward: onnx.ModelProto) -> bool:
    """Write ``result`` to ``path`` atomically (a refusal as the float32 ``forward`` with its verdict);
    False, said in the log, when it cannot be written."""
    model = onnx.ModelProto()
    model.CopyFrom(result.model if result.accepted else _graphless(forward))
    outcome = {"accepted": result.accepted, "agreement": result.agreement,
               "largest_difference": result.largest_difference, "float_layers": list(result.float_layers),
               "recipe": RECIPE}
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, json.dumps(outcome)
    try:
        remove_stale_parts(os.path.dirname(os.path.abspath(path)))
        with open_atomic(path) as f:
            f.write(model.SerializeToString())
    except OSError as e:
        log.warning("runtime.sampler_precision: int8: cannot write the int8 sampler's cache file %s (%s); "
                    "the sampler runs in float32. Make the model's folder writable, or export the model to "
                    "a folder that is", path, e.strerror or e)
        return False
    return True


def _graphless(forward: onnx.ModelProto) -> onnx.ModelProto:
    """A refusal's file: the forward graph's opsets and an empty graph (its verdict is all it holds)."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "refused", [], []),
                                   opset_imports=list(forward.opset_import))
    model.ir_version = forward.ir_version
    return model


class _Samples:
    """onnxruntime's CalibrationDataReader protocol over an array of samples, ``BATCH`` at a time."""

    def __init__(self, name: str, samples: np.ndarray):
        self._batches = iter([{name: np.ascontiguousarray(samples[i:i + BATCH], np.float32)}
                              for i in range(0, len(samples), BATCH)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize(forward: onnx.ModelProto, samples: np.ndarray, *, keep_float: tuple[str, ...] = ()
             ) -> onnx.ModelProto:
    """The QDQ int8 copy of ``forward`` (onnx_tools.build_forward) calibrated on ``samples`` [S, ...]
    (its input), with the nodes named in ``keep_float`` left in float32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = forward.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="sise-int8-") as work:
        plain, prepared, quantized = (os.path.join(work, f)
                                      for f in ("forward.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(forward, plain)
        quant_pre_process(plain, prepared, skip_symbolic_shape=True)  # folds batch norms into convolutions
        # (no CalibMaxIntermediateOutputs: MinMax keeps only a minimum and a maximum per tensor and batch,
        # and onnxruntime 1.32 drops, not merges, the batches collected when that limit is reached)
        quantize_static(prepared, quantized, _Samples(name, samples), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(keep_float))
        return onnx.load(quantized)


def named(forward: onnx.ModelProto) -> onnx.ModelProto:
    """``forward`` with a name on every node (``sise/fw/<i>`` where it had none): the names that say which
    layers stay float32."""
    for i, node in enumerate(forward.graph.node):
        if not node.name:
            node.name = f"sise/fw/{i}"
    return forward


def float_prefixes(forward: onnx.ModelProto) -> list[tuple[str, ...]]:
    """The layers to keep in float32, one choice per attempt: none, then the first 1, 2, 4, ... weighted
    nodes, up to half of them. The first layers are where int8 hurts most: their activations have a few
    channels of wide range that take the levels of the one range a tensor gets."""
    weighted = [n.name for n in forward.graph.node if n.op_type in WEIGHTED]
    counts, k = [0], 1
    while k <= len(weighted) // 2:
        counts.append(k)
        k *= 2
    return [tuple(weighted[:k]) for k in counts]


def target_scores(model: onnx.ModelProto, samples: np.ndarray, targets: np.ndarray, score: str,
                  *, threads: int = 0) -> np.ndarray:
    """float64 [S]: each sample's score for its target class, as the sampler computes it."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, []
    for i in range(0, len(samples), BATCH):
        logits = session.run(None, {name: np.ascontiguousarray(samples[i:i + BATCH], np.float32)})[0]
        out.append(scores_of(logits.reshape(len(logits), -1), score))
    psi = np.concatenate(out)
    return psi[np.arange(len(psi)), targets].astype(np.float64)


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(Pearson r, largest |difference|); r is 1.0 for two constant score sets that are equal."""
    largest = float(np.abs(reference - candidate).max()) if len(reference) else 0.0
    if reference.std() == 0 or candidate.std() == 0:
        return (1.0 if largest == 0 else 0.0), largest
    return float(np.corrcoef(reference, candidate)[0, 1]), largest


def build(forward: onnx.ModelProto, calibration: np.ndarray, check: np.ndarray, targets: np.ndarray,
          score: str, *, threads: int = 0) -> Int8Forward:
    """Quantize ``forward`` on ``calibration`` [S, ...] and check it on ``check`` [R, ...] with their target
    classes ``targets`` [R]: all layers in int8 first, then with more and more of the first layers in float32
    (:func:`float_prefixes`) until it agrees; the last attempt's outcome when none does."""
    forward = named(forward)
    reference = target_scores(forward, check, targets, score, threads=threads)
    for keep_float in float_prefixes(forward):
        model = quantize(forward, calibration, keep_float=keep_float)
        r, largest = compare(reference, target_scores(model, check, targets, score, threads=threads))
        good = r >= MIN_AGREEMENT or largest <= TOLERANCE
        result = Int8Forward(model=model if good else None, agreement=r, largest_difference=largest,
                             float_layers=keep_float)
        log.info("int8 sampler attempt %s: %s", "passed" if good else "failed", result.describe())
        if good:
            break
    return result
