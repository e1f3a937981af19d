"""Configuration: frozen dataclasses are the only schema. YAML keys equal field names; unknown keys,
missing required keys, wrong types and values outside a ``Literal``'s choices are errors that name the
key. :func:`json_schema` derives a JSON Schema from the same dataclasses (for editors; ``inspector
schema`` prints it)."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

import cv2
import yaml

from onnx_tools import CONVENTIONS, SCORE_KINDS, TASKS

from .common.reading import CONFIG_LIMIT, read_regular
from .errors import ConfigError

log = logging.getLogger(__name__)
ResizeMode = Literal["stretch", "letterbox", "shorter_side_center_crop"]
GrayMode = Literal["replicate", "refuse"]
Layout = Literal["NCHW", "NHWC"]
ChannelOrder = Literal["RGB", "BGR", "GRAY"]
InputDtype = Literal["uint8", "uint16", "float"]
ScoreKind = Literal[SCORE_KINDS]  # the export's list, one place
Task = Literal[TASKS]
SamplerPrecision = Literal["float32", "int8"]
SamplerRuntime = Literal["auto", "onnxruntime", "openvino"]
HeadConvention = Literal[("auto", *CONVENTIONS)]  # onnx_tools.detection's conventions
Threshold = Literal["otsu", "fixed", "percentile"]  # how engine.method.regions cuts a map into regions
THRESHOLDS = typing.get_args(Threshold)
Fusion = Literal["otsu", "soft"]  # the paper's hard Otsu gate; a sigmoid gate around the same threshold
FUSIONS = typing.get_args(Fusion)
OverlayFormat = Literal["png", "jpg"]
RESIZE_MODES = typing.get_args(ResizeMode)
COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
             for name in dir(cv2) if name.startswith("COLORMAP_")}
CHANNEL_ORDERS = typing.get_args(ChannelOrder)
INPUT_DTYPES = typing.get_args(InputDtype)
# Speed/quality trade-offs, chosen from benchmarks/presets.py (both image sets): scoring a share of every
# block's maps and predicting the rest (inspector.surrogate) agreed better with full SISE than Ada-SISE
# (the former balanced) and Ada-SISE capped at 16 maps per layer (the former fast) at their cost. The
# README ("Faster presets") has the table.
PRESETS = {
    "quality": {"mu": 0.0, "adaptive": False, "max_masks_per_layer": None, "score_fraction": 1.0},
    "balanced": {"mu": 0.0, "adaptive": False, "max_masks_per_layer": None, "score_fraction": 1 / 3},
    "fast": {"mu": 0.0, "adaptive": False, "max_masks_per_layer": None, "score_fraction": 0.1},
}
Preset = Literal[tuple(PRESETS)]


@dataclass(frozen=True)
class PreprocessConfig:
    """Image -> model tensor. ``scale`` multiplies raw pixel values, then (x - mean) / std per channel."""

    size: tuple[int, int] | None = None  # (H, W); default: the model's input size
    resize: ResizeMode = "stretch"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: ChannelOrder = "RGB"
    input_dtype: InputDtype = "uint8"  # the bit depth images are expected in; others are refused
    max_pixels: int = 50_000_000
    gray: GrayMode = "replicate"  # a grey image on a 3-channel model: its channel repeated, or refused
    letterbox_fill: Literal["mean"] | float = "mean"  # the letterbox border: dataset mean, or a pixel value


def _is_number(value) -> bool:
    """A real number that is not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_random_masks(key: str, masks, grid, p) -> None:
    """The ranges of a random-mask method's settings (``key``: where they are in the YAML)."""
    if masks < 1:
        raise ConfigError(f"{key}.masks: must be >= 1, got {masks}")
    if grid < 1:
        raise ConfigError(f"{key}.grid: must be >= 1, got {grid}")
    if not 0 < p <= 1:
        raise ConfigError(f"{key}.p: must be in (0, 1], got {p}")


@dataclass(frozen=True)
class RiseConfig:
    """The RISE baseline's settings (YAML ``method: {rise: {...}}``): number of random masks, grid cells
    per side, keep probability, and the seed of the masks (None: ``method.seed``)."""

    masks: int = 4000
    grid: int = 7
    p: float = 0.5
    seed: int | None = None

    def __post_init__(self):
        _check_random_masks("method.rise", self.masks, self.grid, self.p)


@dataclass(frozen=True)
class DRiseConfig:
    """The D-RISE baseline's settings for detectors (YAML ``method: {drise: {...}}``), with the defaults of
    Petsiuk et al. (CVPR 2021): 5,000 masks on a 16 x 16 grid, keep probability 0.5; seed None:
    ``method.seed``."""

    masks: int = 5000
    grid: int = 16
    p: float = 0.5
    seed: int | None = None

    def __post_init__(self):
        _check_random_masks("method.drise", self.masks, self.grid, self.p)


# The RISE keys before they moved into method.rise, accepted (with a warning) for one release.
LEGACY_METHOD_KEYS = {"rise_masks": "masks", "rise_grid": "grid", "rise_p": "p"}


@dataclass(frozen=True)
class MethodConfig:
    """The ``method`` section: which method, SISE's settings (preset, mu, adaptive, max_masks_per_layer),
    what every method shares (chunk_size, seed) and the other methods' own settings (rise, drise)."""

    name: str = "sise"
    preset: Preset = "quality"
    mu: float | None = None  # None: from the preset
    adaptive: bool | None = None  # Ada-SISE: Otsu on the positive max-normalised gradients, per layer
    max_masks_per_layer: int | None = None
    # the share of each block's selected maps scored by a forward pass; the others' scores are predicted
    # from similar scored maps (inspector.surrogate). None: from the preset
    score_fraction: float | None = None
    chunk_size: int | None = None  # masks per sampler run; None: from runtime.memory_budget_mb
    seed: int = 0  # seed of the seeded methods (RISE's masks) unless their own settings name one
    rise: RiseConfig = field(default_factory=RiseConfig)
    drise: DRiseConfig = field(default_factory=DRiseConfig)
    # SISE's block-wise gate: otsu, the paper's [V > Otsu(V)]; soft, sigmoid((V - Otsu(V)) / (width *
    # std(V))), steadier when the image barely changes (README, "Explanations that hold still")
    fusion: Fusion = "otsu"
    fusion_width: float = 0.25  # soft only: the sigmoid's width in standard deviations of the layer map

    def __post_init__(self):
        if not _is_number(self.fusion_width) or not self.fusion_width > 0:
            raise ConfigError(f"method.fusion_width: must be a number > 0, got {self.fusion_width!r}")
        if self.score_fraction is not None and (not _is_number(self.score_fraction)
                                                or not 0 < self.score_fraction <= 1):
            raise ConfigError(f"method.score_fraction: must be a number in (0, 1] (1 scores every selected "
                              f"map), got {self.score_fraction!r}")

    def resolved(self) -> MethodConfig:
        """A copy with the preset's values filled in where a field is None, and RISE's and D-RISE's seeds."""
        base = PRESETS[self.preset]
        return dataclasses.replace(
            self, mu=base["mu"] if self.mu is None else self.mu,
            adaptive=base["adaptive"] if self.adaptive is None else self.adaptive,
            max_masks_per_layer=(base["max_masks_per_layer"] if self.max_masks_per_layer is None
                                 else self.max_masks_per_layer),
            score_fraction=base["score_fraction"] if self.score_fraction is None else self.score_fraction,
            rise=dataclasses.replace(self.rise, seed=self.seed if self.rise.seed is None else self.rise.seed),
            drise=dataclasses.replace(self.drise,
                                      seed=self.seed if self.drise.seed is None else self.drise.seed))


@dataclass(frozen=True)
class RuntimeConfig:
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    # e.g. {prefer_nhwc: 1, cudnn_conv_algo_search: EXHAUSTIVE}
    cuda_options: dict = field(default_factory=dict)
    intra_op_threads: int = 0  # 0: onnxruntime's default
    # run the per-mask forward passes in float16 (meant for CUDA; needs onnxconverter-common)
    fp16: bool = False
    # the sampler's per-mask forward passes (CPU provider): int8 runs an int8 QDQ copy of the model's
    # forward part, calibrated on masked images of calibration_images and cached beside the model; the
    # explain model (activations, gradients) stays float32. Kept float32, with a warning, where the copy
    # does not agree with float32 (inspector.engine.runtime.int8)
    sampler_precision: SamplerPrecision = "float32"
    # what runs the int8 sampler: auto is OpenVINO when the openvino package is installed (the extra
    # openvino; about twice as fast on VNNI/AMX CPUs), else onnxruntime's CPU provider
    sampler_runtime: SamplerRuntime = "auto"
    # a folder of typical line images (good and defective; the first 16 by name are used) that the int8
    # sampler is calibrated on; relative to the config file
    calibration_images: str | None = None
    # memory the masked images of one sampler run may take (their activations, beside the weights); sets
    # method.chunk_size when that is not given. None: 512 MB or a quarter of the available memory if less
    # (CPU); 4096 MB of device memory (CUDA)
    memory_budget_mb: int | None = None


@dataclass(frozen=True)
class ExportConfig:
    """Used only when ``model`` is a plain ONNX model (exported on first use, cached beside it): a
    classifier, or with ``task: detect`` a one-stage detector whose head follows ``head``."""

    score: ScoreKind = "softmax"
    blocks: tuple[str, ...] | None = None  # None: automatic discovery
    layout: Layout | None = None  # the image input's layout; None: found from the graph
    task: Task = "classify"
    head: HeadConvention = "auto"
    # a constant value (a number, or a list shaped as one image's share of the input) for each input of
    # the model besides the image, written into the exported graph (a model without such inputs: {})
    extra_inputs: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DetectConfig:
    """A detector's detections: an anchor's best class is kept when its score (objectness x class
    probability) reaches ``conf``, then class-wise non-maximum suppression at IoU ``iou``; at most
    ``max_detections`` per image, the highest scores first. Each kept detection is explained.
    ``none_label``: what a part without any detection is labelled (its result's prediction; a good class
    when named in ``good_classes``); a part with detections is labelled its highest-scoring one's class."""

    conf: float = 0.25
    iou: float = 0.45
    max_detections: int = 20
    none_label: str = "ok"


@dataclass(frozen=True)
class RegionsConfig:
    """Regions of evidence on the fused map: threshold otsu | fixed (value in [0, 1]) | percentile
    (value in [0, 100]); components smaller than min_area pixels (original resolution) are dropped."""

    threshold: Threshold = "otsu"
    value: float = 0.5
    min_area: int = 16


@dataclass(frozen=True)
class VisualsConfig:
    colormap: str = "jet"  # any OpenCV colormap name: jet, turbo, inferno, viridis, hot, ...
    opacity: float = 0.5
    good_opacity: float = 0.15  # the muted heatmap of a part predicted good (classes in good_classes)


OVERLAY_FORMATS = typing.get_args(OverlayFormat)


@dataclass(frozen=True)
class OutputsConfig:
    """Which files each explanation gets: the overlay as PNG or JPEG, and whether to keep the npz maps."""

    overlay: OverlayFormat = "png"
    jpeg_quality: int = 90
    npz: bool = True


@dataclass(frozen=True)
class RoiConfig:
    """Part/ROI mask (white = part) at any resolution; images whose share of evidence inside it is
    below flag_below are flagged (the model may be looking at the fixture, a label or the background)."""

    mask: str
    flag_below: float = 0.5


@dataclass(frozen=True)
class IdentityConfig:
    """How watch and audit learn a part's identity (serial, line, camera, product, tags): from its file
    name (``pattern``, such as ``{line}_{camera}_{serial}.png``; ``{*}`` matches anything) and/or from a
    JSON sidecar ``<image file name>.json`` beside the image (``sidecar: true``; it wins field by field).
    Identity never changes an explanation."""

    pattern: str | None = None
    sidecar: bool = False


@dataclass(frozen=True)
class MqttTlsConfig:
    """TLS to the broker: the CA that signed its certificate, and this client's own when it asks."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    """Publish each result and verdict to an MQTT broker (``mqtt://host:1883``, ``mqtts://host:8883``):
    ``<topic>/result``, ``<topic>/verdict``, and the last result per line and camera retained at
    ``<topic>/last/<line>/<camera>``. The password is read from ``password_file``."""

    url: str
    topic: str = "sise"
    qos: int = 1
    client_id: str | None = None
    username: str | None = None
    password_file: str | None = None
    tls: MqttTlsConfig | None = None


@dataclass(frozen=True)
class WebhookConfig:
    """POST each result and verdict as JSON to ``url``, signed with HMAC-SHA256 of the body under the
    secret in ``secret_file`` (header ``X-SISE-Signature: sha256=<hex>``); retried until it answers 2xx."""

    url: str
    secret_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class OpcUaConfig:
    """An OPC UA server in station and watch with the last result per line and camera (README,
    "Connecting the line"). ``users_file``: ``name:password`` lines (mode 600); ``security``: the policy
    offered (Basic256Sha256 for sign and sign_and_encrypt); ``certificate``/``private_key``: the server's
    (generated into the output folder when not given)."""

    endpoint: str = "opc.tcp://127.0.0.1:4840/sise/"
    namespace: str = "urn:sise-inspector"
    security: Literal["none", "sign", "sign_and_encrypt"] = "sign_and_encrypt"
    anonymous: bool = False
    users_file: str | None = None
    certificate: str | None = None
    private_key: str | None = None


@dataclass(frozen=True)
class IntegrationsConfig:
    """Where results and verdicts go besides the store (README, "Connecting the line"). ``base_url``:
    the station's address as the plant reaches it, to make the messages' links absolute."""

    base_url: str | None = None
    mqtt: MqttConfig | None = None
    webhook: WebhookConfig | None = None
    opcua: OpcUaConfig | None = None

    @property
    def enabled(self) -> bool:
        return self.mqtt is not None or self.webhook is not None or self.opcua is not None


@dataclass(frozen=True)
class InspectorConfig:
    model: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    classes: tuple[str, ...] | None = None
    good_classes: tuple[str, ...] = ()  # names of classes that mean "no defect": no boxes, muted overlay
    method: MethodConfig = field(default_factory=MethodConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    visuals: VisualsConfig = field(default_factory=VisualsConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    roi: RoiConfig | None = None
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    integrations: IntegrationsConfig = field(default_factory=IntegrationsConfig)


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


# YAML scalar types: what the error calls them, and which parsed values they accept (bools are not numbers).
SCALARS = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: _is_number(v)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _finite(key: str, value: float) -> float:
    """``value`` as a float; ConfigError naming ``key`` for NaN, infinity or an int too large for a float."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {number}")
    return number


def _check_range(key: str, value: float, low: float, high: float, why: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be in [{low:g}, {high:g}]{why}, got {value}")


def _described(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return SCALARS[hint][0] if hint in SCALARS else str(hint)


def _convert(key: str, value, hint):
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _convert(key, value, args[0])
        for arg in args:  # the first type that takes the value (e.g. the word "mean" or a number)
            try:
                return _convert(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(map(_described, args))}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is Literal:
        _check_choice(key, value, typing.get_args(hint))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(hint)
        item = args[0]
        if len(args) > 1 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if hint in SCALARS:
        what, accepts = SCALARS[hint]
        if not accepts(value):
            raise ConfigError(f"{key}: expected {what}, got {value!r}")
        return _finite(key, value) if hint is float else value
    raise ConfigError(f"{key}: unsupported type {hint}")  # a schema bug, not a user error


def _build(cls, raw, prefix: str = ""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {key}")
            continue
        values[name] = _convert(key, raw[name], hints[name])
    return cls(**values)


def _numbers(value) -> bool:
    """A finite number (not a bool), or a non-empty list of such lists or numbers."""
    if isinstance(value, list):
        return bool(value) and all(_numbers(v) for v in value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _validate(cfg: InspectorConfig) -> None:
    p, m = cfg.preprocess, cfg.method
    for name, value in cfg.export.extra_inputs.items():
        if not isinstance(name, str) or not _numbers(value):
            raise ConfigError(f"export.extra_inputs.{name}: expected a number or a list of numbers (one "
                              f"image's value of that input), got {value!r}")
    _check_choice("visuals.colormap", cfg.visuals.colormap.lower(), tuple(COLORMAPS))
    if not 0.0 <= cfg.visuals.opacity <= 1.0:
        raise ConfigError(f"visuals.opacity: must be in [0, 1], got {cfg.visuals.opacity}")
    _check_range("visuals.good_opacity", cfg.visuals.good_opacity, 0, 1)
    _check_range("outputs.jpeg_quality", cfg.outputs.jpeg_quality, 1, 100)
    labels = [*(cfg.classes or []), cfg.detect.none_label]  # a detector's part without detections
    unknown = [c for c in cfg.good_classes if c not in labels]
    if unknown:
        known = ", ".join(cfg.classes) if cfg.classes else "none configured: add the key classes"
        raise ConfigError(f"good_classes: {unknown} not among classes ({known}) or detect.none_label "
                          f"({cfg.detect.none_label})")
    _validate_regions(cfg.regions)
    _check_range("detect.conf", cfg.detect.conf, 0, 1)
    _check_range("detect.iou", cfg.detect.iou, 0, 1)
    _check_range("detect.max_detections", cfg.detect.max_detections, 1, 1000)
    if cfg.roi is not None:
        _check_range("roi.flag_below", cfg.roi.flag_below, 0, 1)
    _validate_integrations(cfg.integrations)
    _validate_runtime(cfg.runtime)
    if cfg.identity.pattern is not None:
        from .common.identity import IdentityError, compile_pattern

        try:
            compile_pattern(cfg.identity.pattern)
        except IdentityError as e:
            raise ConfigError(str(e)) from None
    if cfg.regions.min_area < 1:
        raise ConfigError("regions.min_area: must be >= 1")
    n = 1 if p.channel_order == "GRAY" else 3
    for key, values in (("preprocess.mean", p.mean), ("preprocess.std", p.std)):
        if len(values) not in (1, n):
            raise ConfigError(f"{key}: expected 1 or {n} values for channel_order {p.channel_order}, "
                              f"got {len(values)}")
    if any(s == 0 for s in p.std):
        raise ConfigError("preprocess.std: values must be non-zero")
    if p.size is not None and (len(p.size) != 2 or min(p.size) <= 0):
        raise ConfigError(f"preprocess.size: expected [H, W] with positive values, got {list(p.size)}")
    if m.mu is not None and m.mu < 0:
        raise ConfigError(f"method.mu: must be >= 0, got {m.mu}")
    if m.chunk_size is not None and m.chunk_size < 1:
        raise ConfigError(f"method.chunk_size: must be >= 1, got {m.chunk_size}")
    if m.max_masks_per_layer is not None and m.max_masks_per_layer < 1:
        raise ConfigError(f"method.max_masks_per_layer: must be >= 1, got {m.max_masks_per_layer}")
    if p.max_pixels < 1:
        raise ConfigError("preprocess.max_pixels: must be >= 1")
    if p.scale <= 0:
        raise ConfigError(f"preprocess.scale: must be > 0, got {p.scale}")
    if cfg.runtime.memory_budget_mb is not None and cfg.runtime.memory_budget_mb < 1:
        raise ConfigError(f"runtime.memory_budget_mb: must be >= 1, got {cfg.runtime.memory_budget_mb}")
    if cfg.runtime.intra_op_threads < 0:
        raise ConfigError(f"runtime.intra_op_threads: must be >= 0 (0: onnxruntime's default), got "
                          f"{cfg.runtime.intra_op_threads}")


def _validate_runtime(r: RuntimeConfig) -> None:
    if r.sampler_precision == "int8" and r.fp16:
        raise ConfigError("runtime.sampler_precision: int8 and runtime.fp16: true exclude each other; "
                          "int8 is for the CPU provider, fp16 for CUDA: keep one")
    if r.sampler_runtime == "openvino" and r.sampler_precision != "int8":
        raise ConfigError("runtime.sampler_runtime: openvino runs the int8 sampler; set "
                          "runtime.sampler_precision: int8 too, or remove the key")
    if r.sampler_precision == "int8" and r.calibration_images is None:
        raise ConfigError("runtime.sampler_precision: int8 needs runtime.calibration_images: a folder of "
                          "typical line images (8 to 16, good and defective) to calibrate the int8 "
                          "sampler on")


def _validate_integrations(i: IntegrationsConfig) -> None:
    from urllib.parse import urlsplit

    if i.mqtt is not None:
        url = urlsplit(i.mqtt.url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ConfigError(f"integrations.mqtt.url: {i.mqtt.url!r} is not mqtt://HOST[:PORT] or "
                              "mqtts://HOST[:PORT]")
        if i.mqtt.qos not in (1, 2):
            raise ConfigError(f"integrations.mqtt.qos: {i.mqtt.qos}; use 1 or 2 (0 could lose messages)")
        if not i.mqtt.topic or any(ch in i.mqtt.topic for ch in "+#") or i.mqtt.topic.endswith("/"):
            raise ConfigError(f"integrations.mqtt.topic: {i.mqtt.topic!r}; a topic without + # or a "
                              "trailing /")
        if (i.mqtt.password_file is None) != (i.mqtt.username is None):
            raise ConfigError("integrations.mqtt: give username and password_file together")
        if url.scheme == "mqtts" and i.mqtt.tls is None:
            raise ConfigError("integrations.mqtt: mqtts:// needs tls: {ca_file: ...}")
    if i.webhook is not None:
        url = urlsplit(i.webhook.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"integrations.webhook.url: {i.webhook.url!r} is not http(s)://HOST/...")
        _check_range("integrations.webhook.timeout", i.webhook.timeout, 0.1, 300)
    if i.opcua is not None:
        url = urlsplit(i.opcua.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ConfigError(f"integrations.opcua.endpoint: {i.opcua.endpoint!r} is not opc.tcp://HOST:PORT/...")
        if (i.opcua.certificate is None) != (i.opcua.private_key is None):
            raise ConfigError("integrations.opcua: give certificate and private_key together")
    if i.base_url is not None and not i.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"integrations.base_url: {i.base_url!r} is not http(s)://...")


def _validate_regions(r: RegionsConfig) -> None:
    if r.threshold == "fixed":
        _check_range("regions.value", r.value, 0, 1, " for regions.threshold: fixed (a saliency level)")
    elif r.threshold == "percentile":
        _check_range("regions.value", r.value, 0, 100, " for regions.threshold: percentile")


def _move_legacy_keys(raw):
    """``method.rise_masks`` / ``rise_grid`` / ``rise_p`` -> ``method.rise.masks`` / ``grid`` / ``p``, each
    with a warning naming the new key; both spellings at once is an error. Returns a new mapping."""
    method = raw.get("method") if isinstance(raw, dict) else None
    if not isinstance(method, dict) or not set(method) & set(LEGACY_METHOD_KEYS):
        return raw
    method = dict(method)
    rise = method.get("rise")
    rise = dict(rise) if isinstance(rise, dict) else {} if rise is None else rise
    if not isinstance(rise, dict):
        return raw  # _build reports method.rise's type
    for old, new in LEGACY_METHOD_KEYS.items():
        if old not in method:
            continue
        if new in rise:
            raise ConfigError(f"method.{old} and method.rise.{new} are both set; keep method.rise.{new}")
        rise[new] = method.pop(old)
        log.warning("config key method.%s is deprecated and will be removed; use method.rise.%s "
                    "(method: {rise: {%s: %r}})", old, new, new, rise[new])
    method["rise"] = rise
    return {**raw, "method": method}


def config_from_dict(raw: dict, *, base_dir: str | None = None) -> InspectorConfig:
    """Validate a mapping (parsed YAML or keyword options); relative paths (model, roi.mask) resolve
    against ``base_dir``. Deprecated keys are moved to their new place with a warning."""
    cfg = _build(InspectorConfig, _move_legacy_keys(raw))
    if base_dir and not os.path.isabs(cfg.model):
        cfg = dataclasses.replace(cfg, model=os.path.normpath(os.path.join(base_dir, cfg.model)))
    if base_dir and cfg.roi is not None and not os.path.isabs(cfg.roi.mask):
        roi = dataclasses.replace(cfg.roi, mask=os.path.normpath(os.path.join(base_dir, cfg.roi.mask)))
        cfg = dataclasses.replace(cfg, roi=roi)
    if base_dir:
        cfg = dataclasses.replace(cfg, integrations=_files_beside(cfg.integrations, base_dir))
    images = cfg.runtime.calibration_images
    if base_dir and images is not None and not os.path.isabs(images):
        runtime = dataclasses.replace(cfg.runtime, calibration_images=os.path.normpath(os.path.join(base_dir,
                                                                                                    images)))
        cfg = dataclasses.replace(cfg, runtime=runtime)
    _validate(cfg)
    return cfg


def _files_beside(i: IntegrationsConfig, base_dir: str) -> IntegrationsConfig:
    """The integrations' secret and certificate files resolved against the config's folder."""
    def beside(obj, *names):
        found = {n: getattr(obj, n) for n in names if getattr(obj, n) and not os.path.isabs(getattr(obj, n))}
        return dataclasses.replace(obj, **{n: os.path.normpath(os.path.join(base_dir, v))
                                           for n, v in found.items()})

    mqtt = i.mqtt
    if mqtt is not None:
        mqtt = beside(mqtt, "password_file")
        if mqtt.tls is not None:
            mqtt = dataclasses.replace(mqtt, tls=beside(mqtt.tls, "ca_file", "cert_file", "key_file"))
    webhook = beside(i.webhook, "secret_file") if i.webhook is not None else None
    opcua = beside(i.opcua, "users_file", "certificate", "private_key") if i.opcua is not None else None
    return dataclasses.replace(i, mqtt=mqtt, webhook=webhook, opcua=opcua)


def load_config(path: str | os.PathLike) -> InspectorConfig:
    """Read and validate a YAML config file."""
    path = os.fspath(path)
    try:
        text = read_regular(path, CONFIG_LIMIT, what="config file").decode("utf-8")
        raw = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the config is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    try:
        return config_from_dict(raw if raw is not None else {},
                                base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _schema_of(hint) -> dict:
    """JSON Schema of one annotated type (the same types ``_convert`` accepts)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return {"anyOf": [_schema_of(a) if a is not type(None) else {"type": "null"} for a in args]}
    if dataclasses.is_dataclass(hint):
        return _schema_of_dataclass(hint)
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is tuple:
        args = typing.get_args(hint)
        items = {"type": "array", "items": _schema_of(args[0])}
        if len(args) > 1 and args[1] is not Ellipsis:
            items.update(minItems=len(args), maxItems=len(args))
        return items
    if hint is dict or origin is dict:
        return {"type": "object"}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[hint]}


def _schema_of_dataclass(cls) -> dict:
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        prop = _schema_of(hints[f.name])
        if f.default is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default):
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        properties[f.name] = prop
    out = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out["description"] = " ".join(cls.__doc__.split())
    if required:
        out["required"] = required
    return out


def json_schema() -> dict:
    """A JSON Schema (draft 2020-12) of the YAML config, derived from the dataclasses: types, choices and
    defaults. Ranges and cross-key rules are checked by :func:`config_from_dict` only."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "SISE Inspector config",
            **_schema_of_dataclass(InspectorConfig)}
