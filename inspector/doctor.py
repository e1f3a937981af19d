"""`inspector doctor`: what this machine can run, and whether the configured setup really works.

Reports the onnxruntime flavour and version, the providers that are available *and* work (a tiny
session is created and run on each, and the provider that actually ran is read back), the CUDA/cuDNN
libraries the GPU flavour needs, the model contract, and a short timed self-test of one explanation.
Exit code 0 when the configured first provider works and the self-test passes, 1 otherwise.
"""

from __future__ import annotations

import importlib.metadata as md
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .config import InspectorConfig, load_config
from .engine.runtime.session import CUDA_LIBRARIES, cuda_libraries, probe_session

# pip packages that each install the `onnxruntime` module: two of them in one environment overwrite each
# other's files, and removing either breaks `import onnxruntime`
FLAVOURS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml",
            "onnxruntime-training")


def installed_flavours() -> list[str]:
    """``name version`` of each onnxruntime package installed here."""
    found = []
    for dist in FLAVOURS:
        try:
            found.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return found


def flavour() -> str:
    found = installed_flavours()
    return " + ".join(found) if found else "unknown (no onnxruntime distribution metadata)"


def _tiny_model() -> bytes:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]),
                               helper.make_node("Relu", ["c"], ["y"])],
                              "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # the IR of opset 17: what any onnxruntime >= 1.14 reads (a newer onnx writes a newer IR)
    model.ir_version = 8
    return model.SerializeToString()


def probe_provider(name: str, options: dict | None = None) -> tuple[bool, str]:
    """(works, detail): run a tiny Conv+Relu session on ``name`` alone and check it really ran there."""
    try:
        sess = probe_session(_tiny_model(), name, options)
        y = sess.run(None, {"x": np.ones((1, 3, 4, 4), np.float32)})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (Fail, EPFail, ...) derive from Exception only
        return False, f"session failed: {str(e).splitlines()[0][:200]}"
    actual = sess.get_providers()[0]
    if actual != name:
        return False, f"fell back to {actual}"
    if not np.allclose(y, 3.0):
        return False, "wrong result"
    return True, "ran a test session"


def self_test(cfg: InspectorConfig) -> tuple[str, float, str]:
    """(provider, seconds, summary) of one capped explanation of a synthetic image."""
    import dataclasses

    from .engine.inspector import Inspector
    from .engine.runtime.preprocess import as_configured
    from .quality.synthetic import sample

    quick = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, max_masks_per_layer=4))
    insp = Inspector(quick)
    image = sample(0, 1, size=max(insp.size)).image[: insp.size[0], : insp.size[1]]  # a scratch on a surface
    start = time.perf_counter()
    exp = insp.explain(as_configured(image, cfg.preprocess))
    seconds = time.perf_counter() - start
    ok = np.isfinite(exp.saliency).all() and exp.saliency.max() <= 1.0
    return insp.sessions.provider, seconds, f"{exp.total_masks} masks, saliency {'ok' if ok else 'INVALID'}"


def cpu_int8_line() -> str:
    """The CPU's int8 instructions, and float32 against int8 on a small convolutional probe."""
    from .engine.runtime.cpu import int8_instructions, int8_probe

    found = int8_instructions()
    said = ("unknown (no /proc/cpuinfo)" if found is None else
            ", ".join(found) if found else "none (int8 runs, on slower kernels)")
    try:
        f32, q8 = int8_probe()
        probe = (f"probe (4 convolutions, 64 channels, 56x56): float32 {f32:.3f} ms, int8 {q8:.3f} ms "
                 f"a sample ({f32 / q8:.1f}x)")
    except Exception as e:  # noqa: BLE001 - a diagnostic: what breaks is the finding
        probe = f"probe FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return f"cpu int8 instructions: {said}; {probe}"


def int8_report(engine) -> list[str]:
    """Whether the configured int8 sampler runs (runtime.sampler_precision), with its check's figures."""
    cfg = engine.config.runtime
    if cfg.sampler_precision != "int8":
        return ["  int8 sampler: off (runtime.sampler_precision: float32; see the README's \"Edge CPUs\")"]
    if engine.int8_calibration is None:
        return ["  PROBLEM: int8 sampler: asked for, but the sampler runs in float32 (the log says why)"]
    from .engine.runtime import int8

    path = int8.cache_path(engine.model.path, engine.model.sha256, engine.int8_calibration)
    cached = int8.read_cached(path)
    return [f"  int8 sampler: runs, calibrated on {cfg.calibration_images}; {cached.describe()}"]


def run_doctor(config_path: str | None, *, out=print) -> int:
    from .demo import example_dir

    path = config_path or f"{example_dir()}/config.yaml"
    status = 0
    out(f"onnxruntime: {ort.__version__} ({flavour()})")
    packages = installed_flavours()
    if len(packages) > 1:
        names = " ".join(p.split()[0] for p in packages)
        out(f"  PROBLEM: {len(packages)} onnxruntime packages are installed at once ({', '.join(packages)}); "
            "they share one module and overwrite each other: pip uninstall -y " + names + ", then install "
            "exactly one extra again (pip install -e '.[gpu]' on a GPU box, '.[cpu]' elsewhere)")
        status = 1
    available = ort.get_available_providers()
    out(f"available providers: {', '.join(available)}")
    cfg = load_config(path)
    working = {}
    for name in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if name not in available:
            out(f"  {name:<24} not in this build" + (" (install the gpu extra: onnxruntime-gpu)"
                                                      if name.startswith("CUDA") else ""))
            continue
        ok, detail = probe_provider(name, cfg.runtime.cuda_options if name.startswith("CUDA") else None)
        working[name] = ok
        out(f"  {name:<24} {'works' if ok else 'BROKEN'}: {detail}")
    if "CUDAExecutionProvider" in available:
        for lib, present in cuda_libraries().items():
            out(f"  {lib:<24} {'found' if present else 'MISSING: install ' + CUDA_LIBRARIES[lib]}")
    if "CPUExecutionProvider" in available:
        out(cpu_int8_line())
    wanted = next((p for p in cfg.runtime.providers if p in available), None)
    out(f"config: {path}")
    out(f"  providers wanted: {', '.join(cfg.runtime.providers)}; first available: {wanted or 'none'}")
    if cfg.runtime.providers and not working.get(cfg.runtime.providers[0], False):
        out(f"  PROBLEM: the configured first provider {cfg.runtime.providers[0]} does not work here")
        status = 1
    try:
        from .engine.runtime.model import load_model

        model = load_model(cfg)
        c = model.contract
        out(f"model: {model.path} (sha256 {model.sha256[:12]}), exported: yes, score {c.score}, "
            f"{c.num_classes} classes, {len(c.blocks)} blocks "
            f"({', '.join(f'{b.shape[1]}x{b.shape[2]}x{b.shape[3]}' for b in c.blocks)})")
        from .engine.inspector import Inspector
        from .engine.runtime.weights import weights_path

        engine = Inspector(cfg)
        shared = (f"memory-mapped from {weights_path(engine.model.path, engine.model.sha256)}"
                  if engine.model.weights_folder else "held by each session")
        out(f"  memory: weights {shared}; {engine.method.chunk_size} masks per sampler run "
            f"({'method.chunk_size' if cfg.method.chunk_size else 'from runtime.memory_budget_mb'})")
        for line in int8_report(engine):
            out(line)
            status = 1 if "PROBLEM" in line else status
        problems = engine.gradient_problems()
        for problem in problems:
            out(f"  PROBLEM: {problem}")
        status = 1 if problems else status
        provider, seconds, summary = self_test(cfg)
        out(f"self-test: one explanation on {provider} in {seconds:.2f} s ({summary})")
        if "INVALID" in summary:
            status = 1
    except Exception as e:  # noqa: BLE001 - a diagnostic: whatever breaks is the finding, reported
        out(f"PROBLEM: {type(e).__name__}: {e}")
        status = 1
    out("doctor: " + ("all good" if status == 0 else "problems found"))
    return status
