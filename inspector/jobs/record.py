"""Explain one image file and record it in the results store: the one function behind `inspector explain`,
`audit`, `watch` and `demo`.

    read the bytes once -> SHA-256 -> claim (content, settings, target) in the store
      -> decode + explain + review -> artifacts written atomically -> result, artifacts, input in one
         transaction

Artifacts go to ``<out>/images/`` under names that cannot collide: ``<first 16 hex of the image hash>_
<8 hex of settings and target>_<safe stem><suffix>``. An image that cannot be explained is a *failed
result* (the run goes on); an error writing outputs or the store is an :class:`OutputError` (the claim
is given back, files of this image are removed, and the run must stop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..common.atomic import commit_group, discard_group, prepare_group, remove_stale_parts
from ..common.identity import NO_IDENTITY, Identity, compile_pattern, identify
from ..common.reading import IMAGE_LIMIT_HINT, image_limit, read_regular
from ..common.version import __version__
from ..engine.explanation import Explanation
from ..engine.inspector import Inspector
from ..engine.review import Review, review
from ..engine.runtime import preprocess as pre
from ..engine.runtime.session import runtime_versions
from ..errors import ConfigError, ImageError, InspectorError, OutputError
from ..store import Claim, ClaimLost, ResultKey, Store, StoreError, display_path
from .artifacts import artifact_suffixes, render
from .detection_artifacts import image_review, joined_map, render_detections, review_detections

log = logging.getLogger(__name__)
ARTIFACT_DIR = "images"


# Settings added after results were first stored, with the value that gives the old behaviour: left out of
# the settings at that value, so that stored results keep their settings hash (and are not explained again).
LATER_DEFAULTS = {"gray": "replicate", "letterbox_fill": "mean"}
METHOD_LATER_DEFAULTS = {"fusion": "otsu", "score_fraction": 1.0}


def result_settings(insp: Inspector) -> dict:
    """Everything that decides a stored result (not how fast it is computed: chunk size, threads and the
    provider are left out)."""
    cfg = insp.config
    own = ("chunk_size", "rise", "drise")
    method = {k: v for k, v in dataclasses.asdict(insp.method).items() if k not in own
              and METHOD_LATER_DEFAULTS.get(k, object()) != v}
    if insp.method.fusion == "otsu":  # the width of a soft gate does not change the paper's fusion
        method.pop("fusion_width")
    # RISE's settings under their names before they moved into method.rise (and the seed its masks use),
    # so that results stored before the move keep their settings hash
    rise = insp.method.rise
    method.update(rise_masks=rise.masks, rise_grid=rise.grid, rise_p=rise.p, seed=rise.seed)
    if insp.method.name == "drise":  # added with detectors: only D-RISE's own results depend on it
        method["drise"] = dataclasses.asdict(insp.method.drise)
    roi = None
    if insp.roi is not None:
        roi = {"mask_sha256": hashlib.sha256(np.packbits(insp.roi).tobytes()
                                             + str(insp.roi.shape).encode()).hexdigest(),
               "flag_below": cfg.roi.flag_below}
    preprocess = {k: v for k, v in dataclasses.asdict(cfg.preprocess).items()
                  if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}
    settings = {"model_sha256": insp.model.sha256, "score": insp.contract.score, "method": method,
                "fp16": cfg.runtime.fp16, "preprocess": preprocess,
                "classes": cfg.classes, "regions": dataclasses.asdict(cfg.regions), "roi": roi}
    if insp.int8_calibration is not None:  # int8 forward passes, calibrated on that set (float32: absent)
        settings["sampler_int8"] = insp.int8_calibration
        settings["sampler_runtime"] = insp.sessions.sampler_runtime
    if insp.detector:  # which detections are kept and how a part without any is labelled
        settings["detect"] = dataclasses.asdict(cfg.detect)
    return settings


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()


def target_key(insp: Inspector, target) -> tuple[str, object]:
    """(key stored with the result, target handed to the engine) for a target option."""
    if target is None:
        return "top", None
    if isinstance(target, (str, int, np.integer)):
        index = insp.class_index(target)
        return f"class:{index}", index
    weights = np.asarray(target, np.float32).reshape(-1)
    return "weights:" + hashlib.sha256(weights.tobytes()).hexdigest(), weights


def safe_stem(path: str) -> str:
    """A file-name-safe, human-readable piece of the image's name (uniqueness comes from the hashes)."""
    stem = os.path.splitext(os.path.basename(display_path(path)))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem[:48] or "image"


@dataclass
class Job:
    """One run's context: the engine, the store, and what identifies this run's results."""

    insp: Inspector
    store: Store
    run_id: int
    scope: str
    out_dir: str
    settings_hash: str
    target_key: str = "top"
    target: object = None
    retry: bool = True
    _pattern: re.Pattern | None = field(default=None, repr=False)
    # claims this run could not give back when it had to (the store or its disk was down at that moment):
    # given back before this run claims anything else, and from the keep-alive thread meanwhile
    unreleased: list[Claim] = field(default_factory=list, repr=False)
    _release_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def artifact_dir(self) -> str:
        return os.path.join(self.out_dir, ARTIFACT_DIR)

    def identity_of(self, path: str) -> tuple[Identity, str | None]:
        """The part an image file is, by the config's identity rule (file name pattern, sidecar)."""
        rule = self.insp.config.identity
        if rule.pattern is None and not rule.sidecar:
            return Identity(), None
        if rule.pattern is not None and self._pattern is None:
            self._pattern = compile_pattern(rule.pattern)
        return identify(path, self._pattern, rule.sidecar)

    def give_back(self, claim: Claim) -> None:
        """Give a claim back unfinished; when the store cannot take it now, keep it to give back later (a
        claim kept would leave the image ``running`` under this live process, to nobody's benefit)."""
        with self._release_lock:
            if claim not in self.unreleased:
                self.unreleased.append(claim)
            self._give_back_unreleased()

    def give_back_unreleased(self) -> int:
        """Give back the claims kept by :meth:`give_back`; returns how many the store still refuses."""
        with self._release_lock:
            return self._give_back_unreleased()

    def _give_back_unreleased(self) -> int:
        for claim in list(self.unreleased):
            try:
                self.store.release(claim, self.run_id)
            except StoreError as e:
                log.warning("cannot give back the claim on image %s yet (%s); trying again",
                            claim.result_id, e)
                break
            self.unreleased.remove(claim)
            log.info("gave back the claim on result %s", claim.result_id)
        return len(self.unreleased)

    @contextlib.contextmanager
    def keep_alive(self):
        """While the block runs: heartbeats for the run, and kept claims given back as soon as the store
        takes them (a station or a watched folder may wait long for its next image)."""
        with self.store.heartbeats(self.run_id, upkeep=self.give_back_unreleased):
            yield


def start_job(insp: Inspector, store: Store, *, kind: str, out_dir: str, scope: str | None = None,
              source: str | None = None, shard: tuple[int, int] = (0, 1), target=None, retry: bool = True,
              plan: list[str] | None = None) -> Job:
    """Register a run in the store and prepare its output folder. ``scope`` groups the inputs of runs that
    continue each other (an audit's resumptions); by default, runs of one kind with the same settings and
    target share one, so a file explained again is listed once. ``plan``: every input of the run, recorded
    with it (an audit's list; the scope's inputs become exactly these)."""
    if insp.detector and target is not None:
        raise ConfigError(f"target {target!r}: a detector's runs explain every detection of each image; "
                          "leave out the target")
    store.outbox = insp.config.integrations.enabled  # messages for the line's systems, with each record
    settings = result_settings(insp)
    digest = settings_hash(settings)
    key, engine_target = target_key(insp, target)
    artifact_dir = os.path.join(out_dir, ARTIFACT_DIR)
    os.makedirs(artifact_dir, exist_ok=True)
    for folder in (out_dir, artifact_dir):  # temporary files of killed runs
        remove_stale_parts(folder)
    scope = scope or f"{kind}:" + hashlib.sha256(f"{digest}|{key}".encode()).hexdigest()[:32]
    run_id = store.start_run(kind=kind, scope=scope, settings_hash=digest, model_sha256=insp.model.sha256,
                             config=settings, out_dir=out_dir, source=source, shard=shard,
                             tool_version=__version__, plan=plan)
    return Job(insp=insp, store=store, run_id=run_id, scope=scope, out_dir=os.path.abspath(out_dir),
               settings_hash=digest, target_key=key, target=engine_target, retry=retry)


@dataclass
class Outcome:
    """What happened to one input. ``state``: explained | failed (explained now) | done | skipped_failed |
    busy (recorded before, or by a live run) | unreadable (the file could not be read)."""

    path: str
    state: str
    result_id: int | None = None
    image_sha256: str | None = None
    error: str | None = None
    fields: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> absolute path
    explanation: Explanation | list[Explanation] | None = None  # a detector's: one per detection
    review: Review | None = None
    identity: Identity = NO_IDENTITY  # the part on the line
    identity_note: str | None = None  # what of its identity could not be read

    @property
    def failed(self) -> bool:
        return self.state in ("failed", "skipped_failed", "unreadable")


def explain_and_record(job: Job, path: str, identity: Identity | None = None) -> Outcome:
    """Explain the image file ``path`` (unless the store has its result) and record everything; the part
    is ``identity``, or what the config's identity rule reads from the file's name and sidecar.

    Raises:
        OutputError: the artifacts or the store could not be written; the run must stop.
    """
    return explain_and_record_many(job, [path], None if identity is None else {path: identity})[0]


def explain_and_record_many(job: Job, paths: list[str],
                            identities: dict[str, Identity] | None = None) -> list[Outcome]:
    """:func:`explain_and_record` for several files, in order; the images this run claims are explained
    together (``Inspector.explain_batch``), each result is recorded as soon as its files are ready.

    Raises:
        OutputError: the artifacts or the store could not be written; the run must stop. The claims of
            images not yet recorded are given back first.
    """
    held: list[_Held] = []
    current = paths[0] if paths else ""
    outcomes: list[Outcome | str | None] = []  # None: held; a path: the same bytes as a held one
    try:
        if job.give_back_unreleased():
            raise StoreError("claims of an earlier attempt cannot be given back yet")
        for current in paths:
            given = (identities or {}).get(current)
            who = (given, None) if given is not None else job.identity_of(current)
            step = _claim_input(job, current, {item.outcome.image_sha256 for item in held}, who)
            if isinstance(step, _Held):
                held.append(step)
                outcomes.append(None)
            else:
                outcomes.append(step)
        if not held:
            return outcomes
        start = time.perf_counter()
        files = _explain(job, held)
        for item in held:
            item.outcome.fields["seconds"] = (time.perf_counter() - start) / len(held)
        finished = iter(list(held))
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                item = next(finished)
                current = item.outcome.path
                outcomes[i] = _record(job, item, files[item.outcome.path])
                held.remove(item)
        later = [o for o in outcomes if isinstance(o, str)]  # now found in the store, as one at a time would
        found = iter(explain_and_record_many(job, later, identities) if later else [])
        return [next(found) if isinstance(o, str) else o for o in outcomes]
    except StoreError as e:
        error = OutputError(f"cannot record {display_path(current)} in the store: {e}; fix it and run the "
                            "same command again: it continues where it stopped")
        error.recorded = [o for o in outcomes if isinstance(o, Outcome)]
        raise error from e
    except OutputError as e:
        e.recorded = [o for o in outcomes if isinstance(o, Outcome)]
        raise
    finally:
        for item in held:  # claimed, not recorded: give them back for the next attempt
            job.give_back(item.claim)


@dataclass
class _Held:
    """An image whose result this run has claimed: its bytes, the claim, and the outcome being filled."""

    outcome: Outcome
    claim: Claim
    key: ResultKey
    data: bytes


def _claim_input(job: Job, path: str, batch_shas: set[str] = frozenset(),
                 who: tuple[Identity, str | None] = (NO_IDENTITY, None)) -> Outcome | _Held | str:
    """Read and hash the file, and claim its result: the final outcome of a file this run does not explain
    (unreadable, done, failed before, busy elsewhere; the part ``who`` is noted on its result), or the
    claim to explain it; the path itself when its bytes are those of an image this batch already holds
    (to be looked up once that is recorded)."""
    try:
        data = read_regular(path, image_limit(job.insp.config.preprocess.max_pixels), what="image file",
                            limit_hint=IMAGE_LIMIT_HINT)
    except OSError as e:
        message = f"{display_path(path)}: cannot read the file ({e.strerror})"
        job.store.record_input(job.scope, job.run_id, path, error=message)
        return Outcome(path, "unreadable", error=message)
    sha = hashlib.sha256(data).hexdigest()
    if sha in batch_shas:
        return path
    job.store.add_image(sha, len(data), path)
    key = ResultKey(sha, job.settings_hash, job.target_key)
    claim = job.store.claim(key, job.run_id, path, retry=job.retry)
    if claim.state == "done" and _files_missing(job, claim.result_id):
        claim = job.store.claim(key, job.run_id, path, redo=True)  # e.g. images/ deleted: make them again
    if not claim.held:
        job.store.record_input(job.scope, job.run_id, path, image_sha256=sha, result_id=claim.result_id)
        job.store.add_part(claim.result_id, job.run_id, path, *who)
        found = _found(path, claim, sha)
        found.identity, found.identity_note = who
        return found
    outcome = Outcome(path, "explained", claim.result_id, sha, identity=who[0], identity_note=who[1])
    return _Held(outcome, claim, key, data)


def _record(job: Job, item: _Held, files: dict[str, bytes]) -> Outcome:
    """Record a claimed image's result and files; the outcome of whoever owns it when another run took it."""
    outcome, path = item.outcome, item.outcome.path
    try:
        _commit(job, item.claim, outcome, files)
    except ClaimLost:  # another run presumed this one dead and took the image: its outcome is the image's
        log.warning("%s: taken over by another run while this one explained it", display_path(path))
        again = job.store.claim(item.key, job.run_id, path, retry=False)
        if again.held:  # the other run gave it back unfinished; leave it for the next run
            job.give_back(again)
            return Outcome(path, "busy", again.result_id, outcome.image_sha256)
        return _found(path, again, outcome.image_sha256)
    return outcome


def _found(path: str, claim: Claim, sha: str) -> Outcome:
    """The outcome of an image this run did not explain: done or failed before, or busy elsewhere."""
    return Outcome(path, {"failed": "skipped_failed"}.get(claim.state, claim.state), claim.result_id, sha)


def _files_missing(job: Job, result_id: int) -> bool:
    """A done result whose files were written into this job's folder, and are not all there any more."""
    result = job.store.result(result_id)
    if result["out_dir"] != display_path(job.out_dir):
        return False  # another machine's or folder's files: not ours to judge
    return not result["artifacts"] or not all(os.path.isfile(p) for p in result["artifacts"].values())


def _explain(job: Job, held: list[_Held]) -> dict[str, dict[str, bytes]]:
    """Fill each claimed image's outcome and return its artifacts' bytes by kind (none for a failed image),
    by path. The images decoded are explained together; an image that fails does not fail the others."""
    insp, cfg = job.insp, job.insp.config
    versions = {"sise_inspector": __version__, "onnxruntime": runtime_versions()["onnxruntime"],
                "provider": insp.sessions.provider}
    files: dict[str, dict[str, bytes]] = {item.outcome.path: {} for item in held}
    images = {}
    for item in held:
        try:
            images[item.outcome.path] = pre.decode_image(item.data, display_path(item.outcome.path),
                                                         max_pixels=cfg.preprocess.max_pixels)
        except Exception as e:  # noqa: BLE001 - the image failed, not the run: recorded, and the run goes on
            _fail(item.outcome, e, versions)
    decoded = [item.outcome for item in held if item.outcome.path in images]
    explained = _explain_images(insp, [images[o.path] for o in decoded], job.target,
                                [display_path(o.path) for o in decoded])
    for outcome, exp in zip(decoded, explained):
        if isinstance(exp, Exception):
            _fail(outcome, exp, versions)
            continue
        try:
            files[outcome.path] = _describe(job, outcome, exp, images[outcome.path], versions)
        except Exception as e:  # noqa: BLE001 - as above
            _fail(outcome, e, versions)
    return files


def _explain_images(insp: Inspector, images: list, target, names: list[str]) -> list:
    """An Explanation or the exception per image: together, or one by one where something other than an
    image's own InspectorError broke the batch (so that it is charged to its image only)."""
    try:
        return insp.explain_batch(images, target=target, errors="collect", names=names,
                                  batch_images=len(images))
    except Exception:  # noqa: BLE001 - see below, image by image
        if len(images) == 1:
            return [_caught(lambda: insp.explain(images[0], target=target, name=names[0]))]
        return [_caught(lambda i=i: insp.explain(images[i], target=target, name=names[i]))
                for i in range(len(images))]


def _caught(call):
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - returned, to be recorded as the image's failure
        return e


def _fail(outcome: Outcome, e: Exception, versions: dict) -> None:
    message = str(e) if isinstance(e, InspectorError) else f"{type(e).__name__}: {e}"
    log.debug("explaining %s failed", display_path(outcome.path), exc_info=e)
    outcome.state, outcome.error = "failed", message
    outcome.fields = {"status": "failed", "error": message, "retryable": not isinstance(e, ImageError),
                      "versions": versions, **dict.fromkeys(_RESULT_COLUMNS)}


def _describe(job: Job, outcome: Outcome, exp: Explanation | list[Explanation], image: np.ndarray,
              versions: dict) -> dict:
    """Review and render one explanation, fill the outcome's fields; the artifacts' bytes by kind."""
    if isinstance(exp, list):
        return _describe_detections(job, outcome, exp, image, versions)
    cfg = job.insp.config
    rv = review(exp, cfg, job.insp.roi)
    extra = {"image_sha256": outcome.image_sha256, "settings_hash": job.settings_hash,
             "target_key": job.target_key}
    files = render(exp, image, cfg, source=display_path(os.path.abspath(outcome.path)), review=rv,
                   roi=job.insp.roi, extra=extra)
    outcome.explanation, outcome.review = exp, rv
    name = (lambda i: None if i is None else (cfg.classes[i] if cfg.classes else str(i)))
    outcome.fields = {
        "status": "done", "error": None, "retryable": None, "versions": versions,
        "prediction": exp.predicted, "prediction_name": name(exp.predicted),
        "confidence": _finite(exp.scores[exp.predicted]), "scores": [_finite(v) for v in exp.scores],
        "target": exp.target, "target_name": name(exp.target), "regions": [r.to_dict() for r in rv.regions],
        "region_count": len(rv.regions), "evidence_peak": max((r.peak for r in rv.regions), default=0.0),
        "evidence_mean": float(exp.saliency_full.mean()), "roi_inside": rv.roi_inside, "flagged": rv.flagged,
        "masks": exp.total_masks, "masks_per_layer": list(exp.masks_per_layer),
        "timings": {k: round(v, 6) for k, v in exp.timings.items()},
    }
    return files


def _describe_detections(job: Job, outcome: Outcome, exps: list[Explanation], image: np.ndarray,
                         versions: dict) -> dict:
    """:func:`_describe` for a detector's image: the result is the image's (labelled its top detection's
    class, or detect.none_label without any; each class's score its best detection's), with a row per
    detection; the artifacts show every detection and each one alone."""
    insp, cfg = job.insp, job.insp.config
    found = review_detections(exps, cfg, insp.roi)
    rv = image_review(exps, image.shape[:2], cfg, insp.roi)
    top = found[0] if found else None
    scores = [0.0] * insp.contract.num_classes
    for d in found:
        scores[d.class_index] = max(scores[d.class_index], d.score)
    timings: dict[str, float] = {}
    for e in exps:
        for k, v in e.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    blocks = len(insp.contract.blocks)
    per_layer = [sum(d.masks_per_layer[b] for d in found) for b in range(blocks)]
    joined = joined_map(exps, image.shape[:2])
    outcome.fields = {
        "status": "done", "error": None, "retryable": None, "versions": versions,
        "prediction": top.class_index if top else None,
        "prediction_name": top.class_name if top else cfg.detect.none_label,
        "confidence": _finite(top.score) if top else None, "scores": [_finite(v) for v in scores],
        "target": None, "target_name": None, "regions": [r.to_dict() for r in rv.regions],
        "region_count": len(rv.regions), "evidence_peak": max((r.peak for r in rv.regions), default=0.0),
        "evidence_mean": float(joined.mean()), "roi_inside": rv.roi_inside, "flagged": rv.flagged,
        "masks": sum(per_layer), "masks_per_layer": per_layer,
        "timings": {k: round(v, 6) for k, v in timings.items()},
        "detections": [d.row() for d in found],
    }
    outcome.explanation, outcome.review = exps, rv
    meta = {"prediction": {"index": outcome.fields["prediction"], "name": outcome.fields["prediction_name"],
                           "confidence": outcome.fields["confidence"]},
            "timings_s": outcome.fields["timings"], "settings": insp.settings()}
    extra = {"image_sha256": outcome.image_sha256, "settings_hash": job.settings_hash,
             "target_key": job.target_key}
    return render_detections(exps, image, cfg, source=display_path(os.path.abspath(outcome.path)),
                             found=found, image_review=rv, roi=insp.roi, extra=extra, meta=meta)


def _finite(value) -> float | None:
    """A score for the store: JSON (PostgreSQL's above all) has no NaN or infinity; they become null."""
    number = float(value)
    return number if math.isfinite(number) else None


_RESULT_COLUMNS = ("prediction", "prediction_name", "confidence", "scores", "target", "target_name",
                   "regions", "region_count", "evidence_peak", "evidence_mean", "roi_inside", "flagged",
                   "masks", "masks_per_layer", "timings")


def artifact_base(job: Job, sha: str, path: str) -> str:
    key = hashlib.sha256(f"{job.settings_hash}|{job.target_key}".encode()).hexdigest()[:8]
    return f"{sha[:16]}_{key}_{safe_stem(path)}"


def _commit(job: Job, claim: Claim, outcome: Outcome, files: dict[str, bytes]) -> None:
    """Files to temporary names, then the result in the store (only if this run still holds the claim),
    then the files renamed into place: files are never renamed for a result this run does not own, and a
    crash between the store and the renames leaves a done result whose missing files the next run makes."""
    base = artifact_base(job, outcome.image_sha256, outcome.path)
    suffixes = artifact_suffixes(job.insp.config.outputs,
                                 detections=sum(kind.startswith("overlay.") for kind in files))
    named = {kind: os.path.join(job.artifact_dir, base + suffixes[kind]) for kind in files}
    rows = [{"kind": kind, "path": os.path.relpath(named[kind], job.out_dir),
             "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for kind, data in files.items()]
    temps = []
    try:
        temps = prepare_group({named[kind]: data for kind, data in files.items()})
        job.store.finish(claim, job.run_id, outcome.fields, rows, scope=job.scope, path=outcome.path,
                         image_sha256=outcome.image_sha256, identity=outcome.identity,
                         identity_note=outcome.identity_note)
    except ClaimLost:
        discard_group(temps)  # the result and its files are the new owner's
        raise
    except (OSError, StoreError) as e:
        discard_group(temps)  # the claim is given back by explain_and_record_many
        raise OutputError(f"cannot record the result of {display_path(outcome.path)}: {_reason(e)}; "
                          "fix it (free space, permissions, the database) and run the same command again: "
                          "it continues where it stopped") from e
    try:
        commit_group(temps)
    except OSError as e:
        raise OutputError(f"{display_path(outcome.path)} is recorded but its files could not be put in place "
                          f"({_reason(e)}); run the same command again to make them") from e
    outcome.artifacts = named


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} ({display_path(e.filename)})" if e.filename else e.strerror
    return str(e)
