"""The public entry point: ``Inspector`` turns images into :class:`Explanation` objects.

image -> preprocess -> target weights -> explain-model run (logits, alphas, ranges, activations on the
      device) -> method.explain (SISE: selection -> sampler runs, one [B, H, W] partial per chunk -> fusion)
      -> per-block padding, mapping back onto the image -> Explanation

The engine knows no method's internals: see :mod:`inspector.methods` for the protocol and the registry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable

import numpy as np

from onnx_tools import BOXES, CLASSES, OBJECTNESS, scores_of

from ..config import InspectorConfig, config_from_dict, load_config
from ..errors import ConfigError, ImageError, InspectorError, ModelContractError, TargetError
from .explanation import Detection, Explanation
from .method.nms import detect, iou
from .methods import MethodContext, MethodResult, get_method
from .review import load_roi
from .runtime import memory
from .runtime import preprocess as pre
from .runtime.model import load_model
from .runtime.session import EngineSessions, runtime_versions
from .sampler_int8 import int8_sampler, use_openvino

log = logging.getLogger(__name__)
# images per explain_batch group: enough to fill a GPU's sampler runs with the masks of small images
DEFAULT_BATCH_IMAGES = 8


def confidences(logits: np.ndarray, score: str) -> np.ndarray:
    """The model's confidence per class, as the export's score kind defines it."""
    return scores_of(logits, score)


class Inspector:
    """Explains a classifier's decisions with SISE.

    Build it with :meth:`from_config` (a YAML file) or :meth:`from_options` (the same keys as keyword
    arguments), then call :meth:`explain` or :meth:`explain_batch`.
    """

    def __init__(self, config: InspectorConfig):
        self.config = config
        self.method = config.method.resolved()
        self._method = get_method(self.method.name)
        self.model = load_model(config)
        c = self.contract = self.model.contract
        self.detector = c.detector
        if self.method.name == "drise" and not self.detector:
            raise ConfigError(f"method.name: drise explains a detector's detections; {self.model.path} is a "
                              "classifier: use rise")
        self.size = (c.input_shape[2], c.input_shape[3]) if c.input_layout == "NCHW" else \
            (c.input_shape[1], c.input_shape[2])
        if config.preprocess.size is not None and tuple(config.preprocess.size) != self.size:
            raise ConfigError(f"preprocess.size {list(config.preprocess.size)} differs from the model input "
                              f"{list(self.size)} of {self.model.path}")
        channels = c.input_shape[1] if c.input_layout == "NCHW" else c.input_shape[3]
        expected = 1 if config.preprocess.channel_order == "GRAY" else 3
        if channels != expected:
            raise ConfigError(f"preprocess.channel_order {config.preprocess.channel_order} gives {expected} "
                              f"channel(s) but the model takes {channels}")
        if config.classes is not None and len(config.classes) != c.num_classes:
            raise ConfigError(f"classes: {len(config.classes)} names for a model with "
                              f"{c.num_classes} classes")
        self._check_labels()
        self.roi = load_roi(config.roi.mask, config.preprocess.max_pixels) if config.roi is not None else None
        self.sessions = EngineSessions(self.model.explain_bytes, self.model.sampler_bytes,
                                       self.model.scorer_bytes, config.runtime, self.model.weights_folder)
        if config.runtime.fp16 and self.sessions.device != "cuda":
            log.warning("runtime.fp16 is meant for CUDA; on %s the float16 forward passes are usually slower",
                        self.sessions.provider)
        self.method = dataclasses.replace(self.method, chunk_size=self._chunk_size())
        for problem in self.gradient_problems():
            log.warning("%s", problem)
        self.int8_calibration: str | None = None  # the calibration's sha256 when the int8 sampler runs
        if config.runtime.sampler_precision == "int8":
            built = int8_sampler(self)
            if built is not None:
                openvino = use_openvino(config.runtime.sampler_runtime)
                self.sessions.use_int8_sampler(built[0], openvino=openvino)
                self.int8_calibration = built[1]

    def _check_labels(self) -> None:
        """A detector's part without detections is labelled detect.none_label, which must be no class; a
        classifier's good classes are classes."""
        cfg, none_label = self.config, self.config.detect.none_label
        if self.detector and none_label in (cfg.classes or []):
            raise ConfigError(f"detect.none_label: {none_label!r} is one of classes; a part without "
                              "detections needs a label of its own (e.g. ok)")
        if not self.detector and none_label in cfg.good_classes and none_label not in (cfg.classes or []):
            known = ", ".join(cfg.classes or [])
            raise ConfigError(f"good_classes: {none_label!r} is not among classes ({known}); "
                              "detect.none_label names a good part only for a detector")

    def _chunk_size(self) -> int:
        """method.chunk_size, or the largest that runtime.memory_budget_mb allows (inspector.memory); 1 for a
        model whose batch is fixed at 1."""
        c, chunk = self.contract, self.method.chunk_size
        if isinstance(c.input_shape[0], int) and c.input_shape[0] == 1:
            if chunk is None or chunk > 1:
                log.warning("model %s has a fixed batch of 1: masks are scored one at a time (slow); "
                            "export the original with `python -m onnx_tools export` (it frees the batch when "
                            "that is shown safe, and says why not otherwise)", self.model.path)
            return 1
        if chunk is not None:
            return chunk
        budget = self.config.runtime.memory_budget_mb or memory.default_budget_mb(self.sessions.device)
        per_mask = memory.PER_MASK_FACTOR * self.model.largest_tensor_bytes
        chunk = memory.chunk_for_budget(budget, per_mask)
        log.info("method.chunk_size %d: runtime.memory_budget_mb %d at about %.1f MB per masked image",
                 chunk, budget, per_mask / 2**20)
        return chunk

    GRADIENT_BOUND = 1e6  # |mean gradient| per channel above this on a probe image: a broken model

    def gradient_problems(self) -> list[str]:
        """Checks the model on a probe image (seeded noise) before it explains parts. Raises
        :class:`ModelContractError` when its class scores or gradients are not finite; returns warnings
        when the gradients are all zero (every map would be empty) or beyond ``GRADIENT_BOUND``."""
        noise = np.random.default_rng(1).integers(0, 256, (*self.size, 3), dtype=np.uint8)
        tensor, _ = self.prepare(pre.as_configured(noise, self.config.preprocess), name="probe image")
        if self.detector:  # the best-scoring (anchor, class) of the probe image
            first = self._explain_run(tensor, self._anchor_target())[0]
            anchor, top = np.unravel_index(int(np.argmax(first.logits)), first.logits.shape)
            out = self._explain_run(tensor, self._anchor_target(int(anchor), int(top)))[0]
            top = f"{top} at anchor {anchor}"
        else:
            first = self._explain_run(tensor, self._one_hot(0))[0]
            top = int(np.argmax(first.logits))
            out = first if top == 0 else self._explain_run(tensor, self._one_hot(top))[0]
        where = f"model {self.model.path}, on a probe image (seeded noise), class {top}"
        if not np.isfinite(out.logits).all() or not all(np.isfinite(a).all() for a in out.alphas):
            raise ModelContractError(f"{where}: the class scores or gradients are not finite (NaN or "
                                     "infinity); the model or its export is broken: check the weights and "
                                     "export it again")
        largest = max(float(np.abs(a).max()) for a in out.alphas)
        if largest == 0.0:
            return [(f"{where}: every block's gradient is zero, so every explanation would be empty; a "
                     "model with constant weights, or a score that does not depend on the image? (check the "
                     "export)")]
        if largest > self.GRADIENT_BOUND:
            return [(f"{where}: gradients up to {largest:.3g} (above {self.GRADIENT_BOUND:g}); explanations "
                     "may be dominated by numerical noise: check the model's last layers and the export's "
                     "--score")]
        return []

    # ----- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | os.PathLike) -> Inspector:
        return cls(load_config(path))

    @classmethod
    def from_options(cls, **options) -> Inspector:
        """Keyword options with the YAML keys, e.g. ``model=..., method={"mu": 0.3}``."""
        return cls(config_from_dict(options))

    # ----- targets --------------------------------------------------------------------------------
    def class_index(self, name_or_index) -> int:
        n = self.contract.num_classes
        if isinstance(name_or_index, str):
            if self.config.classes and name_or_index in self.config.classes:
                return self.config.classes.index(name_or_index)
            if name_or_index.isdigit():
                return self.class_index(int(name_or_index))
            known = (", ".join(self.config.classes) if self.config.classes
                     else "none configured (key: classes)")
            raise TargetError(f"unknown class name {name_or_index!r}; known names: {known}")
        index = int(name_or_index)
        if not 0 <= index < n:
            raise TargetError(f"class index {index} out of range 0..{n - 1}")
        return index

    def _target_weights(self, target, tensors: np.ndarray, timings: dict) -> tuple[list, np.ndarray]:
        """Per image of ``tensors`` [N, ...]: the class index (None for a weight vector), and the float32
        target weights [N, num_classes]. Without a target, one run with zero weights finds each top class."""
        n = self.contract.num_classes
        if target is None:
            start = time.perf_counter()
            probe = self._explain_run(tensors, np.zeros((len(tensors), n), np.float32))
            timings["predict"] = time.perf_counter() - start
            indices = [int(np.argmax(p.logits)) for p in probe]
        elif isinstance(target, (str, int, np.integer)):
            indices = [self.class_index(target)] * len(tensors)
        else:
            target_weights = np.asarray(target, np.float32).reshape(-1)
            if target_weights.shape != (n,):
                raise TargetError(f"target weight vector has {target_weights.size} values; "
                                  f"the model has {n} classes")
            return [None] * len(tensors), np.repeat(target_weights[None], len(tensors), axis=0)
        return indices, np.concatenate([self._one_hot(i) for i in indices])

    def _one_hot(self, index: int) -> np.ndarray:
        """float32 target weights [1, num_classes] for one class."""
        target_weights = np.zeros((1, self.contract.num_classes), np.float32)
        target_weights[0, index] = 1.0
        return target_weights

    def _anchor_target(self, anchor: int | None = None, index: int = 0) -> np.ndarray:
        """A detector's target weights [1, A, C]: one-hot at (anchor, class), or zeros without an anchor."""
        head = self.contract.head
        target_weights = np.zeros((1, head.num_anchors, head.num_classes), np.float32)
        if anchor is not None:
            target_weights[0, anchor, index] = 1.0
        return target_weights

    def _explain_run(self, tensors: np.ndarray, target_weights: np.ndarray) -> list:
        """The explain model on images [N, ...] with target weights [N, num_classes] (a detector's
        [N, A, C]): ExplainOutputs per image."""
        c = self.contract
        return self.sessions.run_explain(tensors, target_weights, input_name=c.input_name,
                                         target_name=c.target_input, output_name=c.output_name,
                                         blocks=c.blocks,
                                         head=(BOXES, CLASSES, OBJECTNESS) if self.detector else ())

    # ----- explanations ---------------------------------------------------------------------------
    def prepare(self, image, *, name: str | None = None) -> tuple[np.ndarray, pre.Geometry]:
        """The model's input tensor (batch 1) for an image path or array, and its geometry; ``name``
        names an array in error messages."""
        source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
        if source is not None:
            array = pre.read_image(source, max_pixels=self.config.preprocess.max_pixels)
        elif isinstance(image, np.ndarray):
            array = image
        else:
            raise ImageError(f"expected an image path or a numpy array, got {type(image).__name__}")
        return pre.to_tensor(array, self.config.preprocess, self.size, self.contract.input_layout,
                             name=source or name or "image array")

    def score_masks(self, tensor: np.ndarray, masks: np.ndarray, target: int, *,
                    box: np.ndarray | None = None) -> np.ndarray:
        """The model's confidence in ``target`` for ``tensor`` times each mask [K, H, W] (the masking
        convention of the explanations); returns [K]. For a detector, ``box`` (x1, y1, x2, y2 in model-input
        pixels) and ``target`` are the detection's, and the score is D-RISE's similarity to it."""
        if self.detector and box is None:
            raise TargetError("a detector's masked images are scored against a detection: give its box")
        target_weights = self._one_hot(target)
        boxes = None if box is None else np.asarray(box, np.float32).reshape(1, 4)
        return self.sessions.score_masks(tensor, masks, target_weights, chunk=self.method.chunk_size,
                                         target_boxes=boxes)[:, 0]

    def explain(self, image, *, target=None, method: str | None = None, progress=None,
                name: str | None = None) -> Explanation | list[Explanation]:
        """Explain one image; for a detector, each of its detections: a list, one Explanation per kept
        detection (``detection`` says which), highest score first.

        Args:
            image: a file path, or an HxW / HxWxC array (RGB order) of the configured input dtype.
            target: None (the top class; for a detector every detection), a class index, a class name,
                or a weight vector [num_classes]. For a detector: None, the index of a detection, or
                (box, class): the detection of that class whose box (x1, y1, x2, y2 in the original
                image's pixels) overlaps it most.
            method: a registered method name (``inspector.methods.METHODS``: sise, gradcam, rise,
                drise); default: the configured one.
            progress: optional callable(done_chunks, total_chunks).
            name: what error messages call an array image (e.g. the file it was decoded from).
        """
        result = self._explain_group([(image, name)], target=target, method=method, progress=progress)[0]
        if isinstance(result, InspectorError):
            raise result
        return result

    def _explain_group(self, items: list, *, target, method: str | None, progress=None) -> list:
        """Explain (image, name) pairs together: one explain-model run for all, then the method on all
        (SISE packs their masks into shared sampler runs). Returns an Explanation or the InspectorError of
        each image; an image that fails on its own does not stop the others. Shared stages' seconds are
        divided among the images. A detector's result per image is the list of its detections'
        explanations."""
        if self.detector:
            return [self._explain_detections(image, name, target, method, progress) for image, name in items]
        timings: dict[str, float] = {}
        results: list = [None] * len(items)
        t0 = time.perf_counter()
        prepared = []  # (position, tensor, geometry, source)
        for i, (image, name) in enumerate(items):
            try:
                source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
                tensor, geometry = self.prepare(image, name=name)
                prepared.append((i, tensor, geometry, source))
            except InspectorError as e:
                results[i] = e
        if not prepared:
            return results
        timings["preprocess"] = time.perf_counter() - t0
        chosen = self._method if method is None else get_method(method)
        tensors = np.concatenate([p[1] for p in prepared])
        try:
            indices, target_weights = self._target_weights(target, tensors, timings)
            t0 = time.perf_counter()
            explained = self._explain_run(tensors, target_weights)
            timings["explain_model"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            contexts = [MethodContext(sessions=self.sessions, explained=e, tensor=p[1], target_weights=w,
                                      size=self.size, chunk_size=self.method.chunk_size,
                                      settings=chosen.settings(self.method), progress=progress)
                        for p, e, w in zip(prepared, explained, target_weights)]
            method_results = chosen.explain_many(contexts)
            timings["sampling"] = time.perf_counter() - t0
        except InspectorError as e:
            if len(prepared) == 1:
                results[prepared[0][0]] = e
                return results
            for i, *_ in prepared:  # whose image it was: each one alone
                results[i] = self._explain_group([items[i]], target=target, method=method)[0]
            return results
        share = {k: v / len(prepared) for k, v in timings.items()}
        for (i, _, geometry, source), e, result, index, w in zip(prepared, explained, method_results, indices,
                                                                 target_weights):
            layer_maps, masks_per_layer = self._per_block(result, chosen.name)
            t0 = time.perf_counter()
            saliency_full = np.clip(pre.to_original(result.saliency, geometry), 0.0, 1.0)
            own = {**share, "fusion": time.perf_counter() - t0}
            own["total"] = sum(share.values()) + own["fusion"]
            results[i] = Explanation(
                saliency=result.saliency, saliency_full=saliency_full.astype(np.float32),
                layer_maps=layer_maps,
                scores=confidences(e.logits, self.contract.score), target=index, target_weights=w,
                predicted=int(np.argmax(e.logits)), masks_per_layer=masks_per_layer, timings=own,
                settings={**self.settings(), "method": method or self.method.name}, source=source)
        return results

    def _explain_detections(self, image, name: str | None, target, method: str | None,
                            progress=None) -> list | InspectorError:
        """Every kept detection of one image (or the one ``target`` names), each explained with the
        gradient of its own score; their sampler runs share the masked images (SISE scores each masked
        image against every detection at once). The InspectorError of the image where it fails."""
        try:
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
            tensor, geometry = self.prepare(image, name=name)
            timings["preprocess"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            probe = self._explain_run(tensor, self._anchor_target())[0]
            timings["predict"] = time.perf_counter() - t0
            detections = self._detections(probe, geometry, target)
            if not detections:
                return []
            chosen = self._method if method is None else get_method(method)
            t0 = time.perf_counter()
            targets = np.concatenate([self._anchor_target(d.anchor, d.class_index) for d in detections])
            if self.batch_images() == 1 and self.method.chunk_size == 1:  # a batch fixed at 1: one run each
                explained = [self._explain_run(tensor, targets[k:k + 1])[0] for k in range(len(detections))]
            else:
                explained = self._explain_run(np.repeat(tensor, len(detections), axis=0), targets)
            timings["explain_model"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            settings = chosen.settings(self.method)
            contexts = [MethodContext(sessions=self.sessions, explained=e, tensor=tensor,
                                      target_weights=self._one_hot(d.class_index)[0], size=self.size,
                                      chunk_size=self.method.chunk_size, settings=settings, progress=progress,
                                      target_box=np.array(d.box_input, np.float32), image_key="image")
                        for e, d in zip(explained, detections)]
            method_results = chosen.explain_many(contexts)
            timings["sampling"] = time.perf_counter() - t0
        except InspectorError as e:
            return e
        share = {k: v / len(detections) for k, v in timings.items()}
        out = []
        for d, e, result in zip(detections, explained, method_results):
            layer_maps, masks_per_layer = self._per_block(result, chosen.name)
            t0 = time.perf_counter()
            saliency_full = np.clip(pre.to_original(result.saliency, geometry), 0.0, 1.0)
            own = {**share, "fusion": time.perf_counter() - t0}
            own["total"] = sum(share.values()) + own["fusion"]
            out.append(Explanation(
                saliency=result.saliency, saliency_full=saliency_full.astype(np.float32),
                layer_maps=layer_maps, scores=probe.logits[d.anchor].astype(np.float32), target=d.class_index,
                target_weights=self._one_hot(d.class_index)[0], predicted=d.class_index,
                masks_per_layer=masks_per_layer, timings=own,
                settings={**self.settings(), "method": method or self.method.name}, source=source,
                detection=d))
        return out

    def _detections(self, probe, geometry: pre.Geometry, target) -> list[Detection]:
        """The kept detections of a probe run (detect.conf, detect.iou, detect.max_detections), or the one
        ``target`` names: an index into them, or (box, class) in the original image's pixels."""
        d = self.config.detect
        boxes, classes, objectness = probe.head
        found = [Detection(box=pre.box_to_original(boxes[a], geometry),
                           box_input=tuple(float(v) for v in boxes[a]), class_index=k, score=s, anchor=a)
                 for a, k, s in detect(boxes, classes, objectness, conf=d.conf, iou_limit=d.iou,
                                       limit=d.max_detections)]
        if target is None:
            return found
        if isinstance(target, (int, np.integer)):
            if not 0 <= int(target) < len(found):
                raise TargetError(f"detection {int(target)} does not exist: the image has {len(found)} "
                                  f"detection(s) at detect.conf {d.conf}")
            return [found[int(target)]]
        try:
            box, wanted = target
            index = self.class_index(wanted)
            box = np.asarray(box, np.float64).reshape(4)
        except (TypeError, ValueError) as e:
            raise TargetError("a detector's target is None, a detection index or (box, class); got "
                              f"{target!r}") from e
        same = [f for f in found if f.class_index == index]
        if not same:
            raise TargetError(f"no detection of class {wanted!r} in the image (detect.conf {d.conf})")
        overlaps = iou(box, np.array([f.box for f in same], np.float64))
        return [same[int(np.argmax(overlaps))]]

    def _per_block(self, result: MethodResult, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """A method's layer maps and forward passes as the Explanation shows them: one per block of the
        model, shallow to deep; what the method gave describes the deepest blocks, the rest are zero maps
        and 0 passes (see MethodResult)."""
        blocks = len(self.contract.blocks)
        maps = list(result.layer_maps) if result.layer_maps is not None else []
        counts = tuple(int(c) for c in result.masks_per_layer)
        if len(maps) > blocks or len(counts) > blocks:
            raise InspectorError(f"method {name}: {len(maps)} layer maps and {len(counts)} mask counts for a "
                                 f"model with {blocks} blocks")
        maps = [None] * (blocks - len(maps)) + maps
        zeros = np.zeros(self.size, np.float32)
        layer_maps = np.stack([zeros if m is None else m for m in maps]).astype(np.float32)
        return layer_maps, (0,) * (blocks - len(counts)) + counts

    def warm_up(self) -> float:
        """Explain one seeded noise image at the model's input size and return the seconds it took.

        The first explanation pays for lazy set-up: on CUDA, cuDNN's algorithm search for the explain
        model and for the sampler's one batch size (0.65-1.1 s for a ResNet-50 on an H100, against 0.19 s
        afterwards). A station calls this at start-up so that the first part on the line does not wait."""
        noise = np.random.default_rng(0).integers(0, 256, (*self.size, 3), dtype=np.uint8)
        image = pre.as_configured(noise, self.config.preprocess)
        start = time.perf_counter()
        self.explain(image)
        return time.perf_counter() - start

    def batch_images(self, wanted: int | None = None) -> int:
        """How many images :meth:`explain_batch` explains together: ``wanted`` (default
        DEFAULT_BATCH_IMAGES), at most method.chunk_size (N images' explain-model run holds about as much
        as a chunk of N masked images, which the memory budget sized), 1 for a model with a fixed batch."""
        if wanted is not None and wanted < 1:
            raise ConfigError(f"batch_images {wanted}: must be at least 1")
        c = self.contract
        if isinstance(c.input_shape[0], int) and c.input_shape[0] == 1:
            return 1
        if self.detector:  # an image's detections fill its explain-model run; images go one at a time
            return 1
        return min(wanted or DEFAULT_BATCH_IMAGES, self.method.chunk_size)

    def explain_batch(self, images: Iterable, *, target=None, errors: str = "raise",
                      batch_images: int | None = None, names: Iterable[str | None] | None = None,
                      method: str | None = None) -> list:
        """Explain several images, ``batch_images`` at a time (see :meth:`batch_images`); the results equal
        :meth:`explain`'s for each image alone (within float rounding). With ``errors="collect"`` a failing
        image yields its :class:`InspectorError` in the result list instead of stopping the batch.
        ``names``: what error messages call array images."""
        images = list(images)
        names = list(names) if names is not None else [None] * len(images)
        size = self.batch_images(batch_images)
        out = []
        for start in range(0, len(images), size):
            group = list(zip(images[start:start + size], names[start:start + size]))
            for result in self._explain_group(group, target=target, method=method):
                if isinstance(result, InspectorError) and errors != "collect":
                    raise result
                out.append(result)
        return out

    @property
    def sampler_precision(self) -> str:
        """What the sampler's forward passes run in: int8 only when the int8 sampler was built and
        accepted."""
        return "float32" if self.int8_calibration is None else "int8"

    def settings(self) -> dict:
        m = self.method
        return {"method": m.name, "preset": m.preset, "mu": m.mu, "adaptive": m.adaptive,
                "max_masks_per_layer": m.max_masks_per_layer, "score_fraction": m.score_fraction,
                "chunk_size": m.chunk_size,
                "fusion": m.fusion, "fusion_width": m.fusion_width,
                "fp16": self.config.runtime.fp16, "sampler_precision": self.sampler_precision,
                "sampler_runtime": self.sessions.sampler_runtime,
                "score": self.contract.score, "provider": self.sessions.provider,
                "model": self.model.path, "model_sha256": self.model.sha256, **runtime_versions()}

