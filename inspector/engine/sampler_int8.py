"""``runtime.sampler_precision: int8``: the engine's int8 sampler, from calibration images to the graph.

Calibration samples are masked images of the model's own kind: for each calibration image (the first
``CALIBRATION_LIMIT`` files of ``runtime.calibration_images`` by name), the image itself and ``CALIBRATE``
of its SISE masks, drawn (seeded) from the maps SISE selects for its top class (by mu or Ada-SISE, without
the per-layer cap): the feature map upsampled
as the sampler does (bilinear, half-pixel centres), min-max scaled, times the image. ``CHECK`` other masks
of each image are the check samples (:mod:`inspector.engine.runtime.int8`), never calibrated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

import cv2
import numpy as np
import onnx

import onnx_tools

from ..errors import ConfigError, InspectorError
from .method.selection import select_maps
from .runtime import int8, openvino_sampler
from .runtime.preprocess import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from .inspector import Inspector

log = logging.getLogger(__name__)

CALIBRATION_LIMIT = 16  # calibration images used, the first by name
CALIBRATE = 24  # masked samples per calibration image (beside the image itself)
CHECK = 12  # check samples per calibration image
MIN_CHECK = 8  # check samples in all, below which nothing is quantized


def calibration_files(folder: str) -> list[str]:
    """The calibration images in ``folder``: its image files by name, at most ``CALIBRATION_LIMIT``."""
    try:
        names = sorted(f for f in os.listdir(folder) if not f.startswith(".")
                       and f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))
    except OSError as e:
        raise ConfigError(f"runtime.calibration_images: cannot list {folder} ({e.strerror}); name a folder "
                          "of typical line images") from e
    if not names:
        raise ConfigError(f"runtime.calibration_images: {folder} holds no image files "
                          f"({', '.join(IMAGE_EXTENSIONS)}); put 8 to 16 typical line images there")
    return [os.path.join(folder, f) for f in names[:CALIBRATION_LIMIT]]


def calibration_sha256(insp: Inspector, files: list[str]) -> str:
    """What the calibration samples depend on: the recipe, the settings that select the maps (not
    method.max_masks_per_layer: the samples are drawn from all selected maps, so a capped engine, such as
    doctor's self-test, shares the cache), and each image's name and bytes."""
    m = insp.method
    h = hashlib.sha256(json.dumps({"recipe": int8.RECIPE, "calibrate": CALIBRATE, "check": CHECK,
                                   "mu": m.mu, "adaptive": m.adaptive,
                                   "preprocess": asdict(insp.config.preprocess)},
                                  sort_keys=True, default=list).encode())
    for path in files:
        h.update(os.path.basename(path).encode("utf-8", "surrogateescape") + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _masks(activations: list[np.ndarray], chosen: list[tuple[int, int]], size: tuple[int, int]) -> np.ndarray:
    """float32 [K, H, W]: the min-max scaled, upsampled maps (block b, channel c) of ``chosen``."""
    height, width = size
    out = np.empty((len(chosen), height, width), np.float32)
    for k, (b, c) in enumerate(chosen):
        up = cv2.resize(activations[b][c].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        low, spread = up.min(), up.max() - up.min()
        out[k] = (up - low) / max(spread, 1e-12)
    return out


def masked_samples(insp: Inspector, tensor: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """(calibration samples [1 + <= CALIBRATE, ...], check samples [<= CHECK, ...], the top class) of one
    pre-processed image [1, ...]: the image and its masked copies. A third of the drawn maps, at most CHECK,
    are the check's when SISE selects fewer than CALIBRATE + CHECK maps."""
    n = insp.contract.num_classes
    top = int(np.argmax(insp._explain_run(tensor, np.zeros((1, n), np.float32))[0].logits))
    out = insp._explain_run(tensor, insp._one_hot(top))[0]
    m = insp.method
    pool = [(b, int(c)) for b, (a, s) in enumerate(zip(out.alphas, out.spreads))
            for c in select_maps(a, s, mu=m.mu, adaptive=m.adaptive, cap=None)]
    picked = [pool[i] for i in rng.permutation(len(pool))[:CALIBRATE + CHECK]]
    checked = min(CHECK, len(picked) // 3)
    activations = [a.numpy()[out.row] for a in out.activations]
    masks = _masks(activations, picked, insp.size)
    axis = 1 if insp.contract.input_layout == "NCHW" else 3
    masked = (tensor * np.expand_dims(masks, axis)).astype(np.float32)  # [K, ...]
    return np.concatenate([tensor.astype(np.float32), masked[checked:]]), masked[:checked], top


def _samples(insp: Inspector, files: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration samples, check samples, the check samples' target classes) of all calibration images."""
    rng = np.random.default_rng(0)
    calibration, check, targets = [], [], []
    for path in files:
        tensor, _ = insp.prepare(path)
        cal, chk, top = masked_samples(insp, tensor, rng)
        calibration.append(cal)
        check.append(chk)
        targets += [top] * len(chk)
    return np.concatenate(calibration), np.concatenate(check), np.asarray(targets, np.int64)


def _refusal(insp: Inspector, exported: onnx.ModelProto) -> str | None:
    """Why this engine keeps the float32 sampler whatever the calibration says, or None."""
    if insp.sessions.device != "cpu":
        return (f"it is for the CPU provider, and this engine runs on {insp.sessions.provider} (there, "
                "runtime.fp16 is the fast setting)")
    if insp.detector:
        return "it is built for classifiers; a detector's sampler runs in float32"
    ops = {n.op_type for n in exported.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "the model is quantized already (QDQ); its sampler runs the model as it is"
    return None


def use_openvino(choice: str) -> bool:
    """Whether runtime.sampler_runtime ``choice`` runs the int8 sampler on OpenVINO (auto: when installed;
    openvino without the package is refused when the sampler is built)."""
    return choice == "openvino" or (choice == "auto" and openvino_sampler.available())


def int8_sampler(insp: Inspector) -> tuple[bytes, str] | None:
    """(the int8 sampler graph, the calibration's sha256) for ``insp``, from the cache beside the exported
    model or built and cached now; None when float32 is kept (the reason is in the log)."""
    cfg = insp.config.runtime
    exported = onnx.ModelProto.FromString(insp.model.explain_bytes)
    why = _refusal(insp, exported)
    if why is not None:
        log.warning("runtime.sampler_precision: int8 ignored: %s", why)
        return None
    files = calibration_files(cfg.calibration_images)
    calibration = calibration_sha256(insp, files)
    path = int8.cache_path(insp.model.path, insp.model.sha256, calibration)
    result = int8.read_cached(path)
    if result is None:
        log.warning("calibrating the int8 sampler on %d image(s) of %s (once; cached as %s)", len(files),
                    cfg.calibration_images, path)
        forward = onnx_tools.build_forward(exported)
        onnx_tools.load_into(forward, insp.model.path)
        try:
            samples, check, targets = _samples(insp, files)
        except InspectorError as e:
            raise ConfigError(f"runtime.calibration_images: {e}") from e
        if len(check) < MIN_CHECK:
            log.warning("runtime.sampler_precision: int8 ignored: SISE selects too few maps on the %d "
                        "calibration image(s) to check an int8 copy (%d masked images, %d needed); the "
                        "sampler runs in float32. Add calibration images", len(files), len(check), MIN_CHECK)
            return None
        try:
            result = int8.build(forward, samples, check, targets, insp.contract.score,
                                threads=cfg.intra_op_threads)
        except Exception as e:  # noqa: BLE001 - onnxruntime.quantization's errors have no common base
            log.warning("runtime.sampler_precision: int8 ignored: quantizing %s failed (%s: %s); the sampler "
                        "runs in float32", insp.model.path, type(e).__name__, str(e).splitlines()[0][:200]
                        if str(e) else "")
            return None
        if not int8.write_cached(path, result, forward):
            return None
    if not result.accepted:
        log.warning("runtime.sampler_precision: int8 refused for %s: %s (needs r >= %g or every difference "
                    "<= %g); the sampler runs in float32. Calibration images that cover more of the line's "
                    "parts may help", insp.model.path, result.describe(), int8.MIN_AGREEMENT, int8.TOLERANCE)
        return None
    log.info("int8 sampler from %s: %s", path, result.describe())
    return onnx_tools.build_sampler(exported, forward=result.model).SerializeToString(), calibration
