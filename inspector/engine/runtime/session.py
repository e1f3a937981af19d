"""The only module that touches onnxruntime: providers (with a logged fallback), sessions, and the
two runs of an explanation through IO binding, so that block activations stay on the device between
the explain-model run and the sampler runs (on the CPU provider the same code path runs on host memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from onnx_tools import IMAGE, KEEP, MASKS, SCORES, TARGET, TARGET_BOXES

from ...config import RuntimeConfig
from ...errors import ConfigError, ModelRunError

log = logging.getLogger(__name__)

DEVICE_OF = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}
CUDA_LIBRARIES = {  # what onnxruntime-gpu >= 1.27 (CUDA 13) loads; <= 1.26 wants the .so.12 family
    "libcudart.so.13": "CUDA 13 runtime (nvidia-cuda-runtime)",
    "libcublas.so.13": "cuBLAS 13 (nvidia-cublas)",
    "libcublasLt.so.13": "cuBLASLt 13 (nvidia-cublas)",
    "libcudnn.so.9": "cuDNN 9 (nvidia-cudnn-cu13)",
}
# Set on the float32 sessions unless the config's runtime.cuda_options says otherwise. float32 means
# float32: with onnxruntime's default TF32 convolutions and GEMMs a random-weight ResNet-18's layer maps
# moved by up to 0.48 against the CPU provider on an H100 (benchmarks/cuda_vs_cpu.py). Not set on the
# float16 sampler (runtime.fp16): there it cost speed and cuDNN found no NHWC plan for some convolutions.
FP32_CUDA_DEFAULTS = {"use_tf32": "0"}
_preloaded = False


def cuda_libraries() -> dict[str, bool]:
    """Which of the CUDA libraries the CUDA provider needs this process can load (by soname)."""
    found = {}
    for lib in CUDA_LIBRARIES:
        try:
            ctypes.CDLL(lib)
            found[lib] = True
        except OSError:
            found[lib] = False
    return found


def preload_cuda_libraries() -> None:
    """Once per process, when a CUDA library is not loadable by name: let onnxruntime-gpu load them from
    the nvidia-* pip packages beside it (``onnxruntime.preload_dlls``, onnxruntime-gpu >= 1.21), which is
    where `pip install onnxruntime-gpu[cuda,cudnn]` puts them. What it prints goes to the log."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    if not hasattr(ort, "preload_dlls") or all(cuda_libraries().values()):
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            ort.preload_dlls(msvc=False)
    except Exception as e:  # noqa: BLE001 - best effort; a missing library shows up as a logged CPU fallback
        log.warning("onnxruntime.preload_dlls failed: %s", e)
    for line in said.getvalue().splitlines():
        log.warning("onnxruntime.preload_dlls: %s", line)


def resolve_providers(cfg: RuntimeConfig, *, fp32: bool = True, quiet: bool = False) -> list:
    """Requested providers that this onnxruntime build offers, in order; missing ones are logged (unless
    ``quiet``: said once for the engine's first session). ``fp32``: the session computes in float32
    (FP32_CUDA_DEFAULTS apply)."""
    available = set(ort.get_available_providers())
    unknown = [p for p in cfg.providers if p not in DEVICE_OF]
    if unknown:
        raise ConfigError(f"runtime.providers: {unknown} not supported; use CUDAExecutionProvider and/or "
                          "CPUExecutionProvider")
    chosen = [p for p in cfg.providers if p in available]
    skipped = [p for p in cfg.providers if p not in available]
    if skipped and not quiet:
        log.warning("execution provider(s) %s not available in this onnxruntime build (%s); using %s",
                    ", ".join(skipped), ort.__version__, ", ".join(chosen) or "none")
    if not chosen:
        raise ConfigError(f"runtime.providers: none of {list(cfg.providers)} is available "
                          f"(available: {sorted(available)})")
    if "CUDAExecutionProvider" in chosen:
        preload_cuda_libraries()
    cuda_options = {**(FP32_CUDA_DEFAULTS if fp32 else {}), **cfg.cuda_options}
    return [(p, cuda_options) if p == "CUDAExecutionProvider" else p for p in chosen]


# A QDQ model (QuantizeLinear/DequantizeLinear pairs) runs as its graph says, dequantize -> float op ->
# quantize: onnxruntime would otherwise fuse each group into an integer kernel (QLinearConv, ...) whose
# results differ from the graph's by up to tens of quantization steps, and the exported gradients are the
# graph's. No effect on a model without such pairs.
QDQ_AS_WRITTEN = ("session.disable_quant_qdq", "1")


def make_session(model_bytes: bytes, cfg: RuntimeConfig, what: str, *, fp32: bool = True,
                 quiet: bool = False, weights_folder: str | None = None,
                 integer_kernels: bool = False) -> ort.InferenceSession:
    """``weights_folder``: where the external weights file the graph points into lies (inspector.weights);
    its pages are then shared by the sessions, which is why pre-packing (a private copy of each MatMul and
    Gemm weight per session) is turned off. ``integer_kernels``: QDQ groups run as onnxruntime's integer
    kernels (the engine's own int8 sampler) instead of as written."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not integer_kernels:
        opts.add_session_config_entry(*QDQ_AS_WRITTEN)
    if weights_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", weights_folder)
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if cfg.intra_op_threads:
        opts.intra_op_num_threads = cfg.intra_op_threads
    providers = resolve_providers(cfg, fp32=fp32, quiet=quiet)
    session = ort.InferenceSession(model_bytes, opts, providers=providers)
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if session.get_providers()[0] != wanted:
        log.warning("%s: %s failed to initialise; running on %s", what, wanted, session.get_providers()[0])
    return session


def probe_session(model_bytes: bytes, provider: str, options: dict | None = None) -> ort.InferenceSession:
    """A silent session on ``provider`` alone (``inspector doctor``'s probes); onnxruntime's error is
    raised as it is."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if provider == "CUDAExecutionProvider":
        preload_cuda_libraries()  # as the engine does
    providers = [(provider, options or {})] if provider == "CUDAExecutionProvider" else [provider]
    return ort.InferenceSession(model_bytes, opts, providers=providers)


@dataclass
class ExplainOutputs:
    """One image of an explain-model run: host copies of its small outputs, and device handles of the
    whole run's images and activations, of which it is row ``row``."""

    logits: np.ndarray  # [K] class output of the image (a detector's: its anchors' scores [A, C])
    alphas: list[np.ndarray]  # per block [C_b]
    spreads: list[np.ndarray]  # per block [C_b]
    activations: list  # per block OrtValue [N, C_b, h, w] on the session's device (the run's N images)
    images: object = None  # OrtValue [N, ...]: the run's input tensors, on the device
    row: int = 0  # this image's row in ``images`` and ``activations``
    head: tuple | None = None  # a detector's canonical head: boxes [A, 4], classes [A, C], objectness [A]


class EngineSessions:
    """The explain-model session and the sampler session on one device."""

    def __init__(self, explain_bytes: bytes, sampler_bytes: bytes, scorer_bytes: bytes, cfg: RuntimeConfig,
                 weights_folder: str | None = None):
        self.explain = make_session(explain_bytes, cfg, "explain model", weights_folder=weights_folder)
        self.sampler = make_session(sampler_bytes, cfg, "sampler", fp32=not cfg.fp16, quiet=True,
                                    weights_folder=weights_folder)
        self.provider = self.explain.get_providers()[0]
        self.device = DEVICE_OF.get(self.provider, "cpu")
        self._scorer_bytes, self._cfg, self._scorer = scorer_bytes, cfg, None
        self._weights_folder = weights_folder
        self.sampler_runtime = "onnxruntime"  # or "openvino" (use_int8_sampler)
        self._openvino = None
        self._host = ([], {})  # the device feeds last handed to OpenVINO, and their host arrays
        # masked images run through the model so far (sampler and mask scorer, padding included): the
        # forward passes that benchmarks and evaluations report
        self.masked_images = 0

    def use_int8_sampler(self, sampler_bytes: bytes, *, openvino: bool = False) -> None:
        """Run the sampler as ``sampler_bytes``, an int8 QDQ graph carrying its own weights
        (inspector.sampler_int8), on onnxruntime's integer kernels, or compiled by OpenVINO."""
        if openvino:
            from .openvino_sampler import OpenVinoSampler

            self._openvino = OpenVinoSampler(sampler_bytes, threads=self._cfg.intra_op_threads)
            self.sampler, self.sampler_runtime = None, "openvino"  # the float32 session's memory goes
            return
        self.sampler = make_session(sampler_bytes, self._cfg, "int8 sampler", quiet=True,
                                    integer_kernels=True)

    def score_masks(self, image: np.ndarray, masks: np.ndarray, target: np.ndarray, *, chunk: int,
                    target_boxes: np.ndarray | None = None) -> np.ndarray:
        """The score of image * mask for each target, float32 masks [K, H, W] (in chunks), targets [T, C]
        (a detector's: their classes, with ``target_boxes`` [T, 4]); returns [K, T]."""
        if self._scorer is None:  # built on first use (RISE, metrics)
            self._scorer = make_session(self._scorer_bytes, self._cfg, "mask scorer", fp32=not self._cfg.fp16,
                                        quiet=True, weights_folder=self._weights_folder)
        out = []
        for start in range(0, len(masks), chunk):
            feeds = {IMAGE: image, MASKS: np.ascontiguousarray(masks[start:start + chunk], np.float32),
                     TARGET: np.ascontiguousarray(target, np.float32)}
            if target_boxes is not None:
                feeds[TARGET_BOXES] = np.ascontiguousarray(target_boxes, np.float32)
            with _named_failure("the mask scorer", len(feeds[MASKS])):
                out.append(self._scorer.run([SCORES], feeds)[0])
            self.masked_images += len(feeds[MASKS])
        return np.concatenate(out) if out else np.zeros((0, len(target)), np.float32)

    def run_explain(self, images: np.ndarray, targets: np.ndarray, *, input_name: str, target_name: str,
                    output_name: str, blocks, head: tuple[str, ...] = ()) -> list[ExplainOutputs]:
        """The explain model on N images [N, ...] with their target weights [N, num_classes] (a
        detector's [N, A, C], with ``head`` the names of its canonical outputs boxes, classes,
        objectness): one :class:`ExplainOutputs` per image, sharing the run's device values."""
        binding = self.explain.io_binding()
        images_value = self.device_value(images)
        binding.bind_ortvalue_input(input_name, images_value)
        binding.bind_cpu_input(target_name, targets)
        host = list(head) if head else [output_name]
        for name in host:
            binding.bind_output(name, "cpu")
        for b in blocks:
            binding.bind_output(b.act_output, self.device)
            binding.bind_output(b.grad_output, "cpu")
            binding.bind_output(b.range_output, "cpu")
        with _named_failure("the explain model", len(images)):
            self.explain.run_with_iobinding(binding)
        values = dict(zip(host + [n for b in blocks for n in (b.act_output, b.grad_output, b.range_output)],
                          binding.get_outputs()))
        alphas = [values[b.grad_output].numpy() for b in blocks]
        spreads = [values[b.range_output].numpy() for b in blocks]
        activations = [values[b.act_output] for b in blocks]
        if head:
            boxes, classes, objectness = (values[name].numpy() for name in head)
            logits = objectness[..., None] * classes  # [N, A, C]: each anchor's class scores
            heads = [(boxes[n], classes[n], objectness[n]) for n in range(len(images))]
        else:
            logits = values[output_name].numpy().reshape(len(images), -1)
            heads = [None] * len(images)
        return [ExplainOutputs(logits=logits[n], alphas=[a[n] for a in alphas],
                               spreads=[s[n] for s in spreads], activations=activations,
                               images=images_value, row=n, head=heads[n])
                for n in range(len(images))]

    def device_value(self, array: np.ndarray):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run_sampler(self, feeds: dict, device_feeds: dict, outputs: list[str]) -> list[np.ndarray]:
        """One sampler run: ``feeds`` are host arrays (tiny), ``device_feeds`` OrtValues already on
        the device."""
        if self._openvino is not None:
            return self._run_openvino(feeds, device_feeds, outputs)
        binding = self.sampler.io_binding()
        for name, value in device_feeds.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        with _named_failure("the sampler", None):
            self.sampler.run_with_iobinding(binding)
        self.masked_images += len(feeds[KEEP])
        return [v.numpy() for v in binding.get_outputs()]

    def _run_openvino(self, feeds: dict, device_feeds: dict, outputs: list[str]) -> list[np.ndarray]:
        """The sampler run on OpenVINO: the device feeds (host memory on the CPU provider) as numpy
        arrays, converted once per explain-model run."""
        values, arrays = self._host
        if len(values) != len(device_feeds) or any(a is not b for a, b in zip(values, device_feeds.values())):
            arrays = {name: value.numpy() for name, value in device_feeds.items()}
            self._host = (list(device_feeds.values()), arrays)
        try:
            out = self._openvino.run({**feeds, **arrays}, outputs)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelRunError(f"OpenVINO failed running the int8 sampler ({first[:300]}); set "
                                "runtime.sampler_runtime: onnxruntime") from e
        self.masked_images += len(feeds[KEEP])
        return out


@contextlib.contextmanager
def _named_failure(what: str, batch: int | None):
    """An onnxruntime failure during a run becomes one :class:`ModelRunError` naming the graph, the batch
    and the way out (a model whose batch is baked in fails only at a batch of several)."""
    try:
        yield
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (" at a batch of several: export the original model again with `python -m onnx_tools export`, "
                "which frees a baked-in batch when that is safe, or set method.chunk_size: 1"
                if batch is None or batch > 1 else "")
        raise ModelRunError(f"onnxruntime failed running {what}{hint} ({first[:300]})") from e


def runtime_versions() -> dict:
    return {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}
