"""Speed of the int8 sampler on this machine's CPU, in one run: per image, full SISE (`quality`) with the
float32 sampler and with the int8 sampler (`runtime.sampler_precision: int8`), for the bundled defect
model (128x128), EfficientNet-Lite0 and ResNet-50 (224x224); for ResNet-50 also the same SISE in PyTorch
(tests/sise_reference.py) at its strongest CPU settings (float32, channels_last, channels_last with
bfloat16 autocast where the CPU has it; all cores, no autograd for the masked images). Every row runs in a
fresh process (peak RSS is that process's VmHWM); r is the Pearson r of the fused map with the float32
engine's.
Then the sampler's forward pass per masked image under other settings: onnxruntime's threads, spinning
and memory arena, and OpenVINO's CPU runtime (float32, bfloat16, the same int8 graph) when importable.

    python benchmarks/int8_speed.py                        # all three models (about 15 min on 2 cores)
    python benchmarks/int8_speed.py --models example lite0 --images 3
    PYTHONPATH=/path/to/openvino python benchmarks/int8_speed.py --models resnet50 --only-forward

Calibration (once per model and calibration set, cached beside the model) is timed apart. ResNet-50 has
random weights (no trained copy is available offline); its calibration images are synthetic patterns.
Needs the dev extra (torch; scikit-image for Lite0's calibration pictures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from int8_quality import CALIBRATION_PHOTOS, PHOTOS, defect_options, photo_options, rgb, write_images

from inspector.engine.runtime import openvino_sampler
from inspector.quality.synthetic import sample


def pattern(i: int, size: int = 224) -> np.ndarray:
    """A synthetic 8-bit picture (waves and noise) for the random-weight ResNet-50."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin((5 + i) * xx + i), np.cos((3 + i % 4) * yy), np.sin(4 * (xx + yy) + i)], -1)
    return np.clip(127.5 * (1 + image) + 20 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)


def resnet50_options(work: str) -> dict:
    import onnx
    import torch

    from onnx_tools import export_model
    from tests.models import Bottleneck, ResNet, export_onnx, randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000)).eval()
    path = os.path.join(work, "resnet50.sise.onnx")
    onnx.save(export_model(export_onnx(model, (1, 3, 224, 224))).model, path)
    pictures = [(f"p{i:02d}", pattern(i)) for i in range(12)]
    calibration = write_images(os.path.join(work, "resnet_cal"), pictures)
    return {"model": path, "preprocess": {"size": [224, 224], "resize": "stretch", "scale": 1 / 255,
                                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "method": {"preset": "quality", "fusion": "otsu"},  # the PyTorch reference's cascade
            "runtime": {"providers": ["CPUExecutionProvider"], "calibration_images": calibration}}


def model_set(name: str, work: str, count: int) -> tuple[dict, list[np.ndarray]]:
    if name == "example":
        return defect_options(work), [sample(11, i).image for i in range(count)]
    if name == "lite0":
        import skimage.data

        return photo_options(work), [rgb(getattr(skimage.data, p)()) for p in PHOTOS[:count]]
    return resnet50_options(work), [pattern(100 + i) for i in range(count)]


# ----- the workers (one fresh process per row) ----------------------------------------------------------
def engine_worker(job: dict) -> dict:
    from inspector import Inspector

    insp = Inspector.from_options(**job["options"])
    images = list(np.load(job["images"])["images"])
    if job["warmup"]:
        insp.explain(images[-1])
    times, maps, targets, masks = [], [], [], []
    for image in images:
        t = time.perf_counter()
        exp = insp.explain(image, target=job["targets"][len(times)] if job["targets"] else None)
        times.append(time.perf_counter() - t)
        maps.append(exp.saliency)
        targets.append(exp.target)
        masks.append(exp.total_masks)
    np.save(job["out"], np.stack(maps))
    return {"seconds": times, "targets": targets, "masks": masks, "precision": insp.sampler_precision,
            "chunk": insp.method.chunk_size}


def torch_worker(job: dict) -> dict:
    import torch

    from tests.models import RESNET_TAPS, Bottleneck, ResNet, randomize_bn
    from tests.sise_reference import sise_reference

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000)).eval()
    channels_last = job["variant"] != "float32"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.bfloat16 if job["variant"] == "channels_last+bf16" else False
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    times, maps = [], []
    for image, target in zip(np.load(job["images"])["images"], job["targets"]):
        x = ((image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
        t = time.perf_counter()
        _, fused, _ = sise_reference(model, RESNET_TAPS, np.ascontiguousarray(x), int(target),
                                     batch=job["chunk"], autocast=autocast, channels_last=channels_last)
        times.append(time.perf_counter() - t)
        maps.append(fused)
    np.save(job["out"], np.stack(maps))
    return {"seconds": times}


def run_worker(job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    done = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {job['kind']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- forward passes per masked image under other settings -----------------------------------------------
def ort_forward_ms(model_bytes: bytes, x: np.ndarray, *, threads: int = 0, spinning: bool = True,
                   arena: bool = True, fused: bool = True, prepacking: bool = True) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if not fused:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if not prepacking:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return best_ms(lambda: session.run(None, {name: x}), len(x))


def openvino_forward_ms(model_bytes: bytes, x: np.ndarray, precision: str) -> float:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model=model_bytes, weights=b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return best_ms(lambda: request.infer({0: x}), len(x))


def best_ms(run, batch: int, repeats: int = 3) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times) / batch


def forward_table(title: str, options: dict, chunk: int) -> None:
    import onnx

    import onnx_tools
    from inspector import Inspector
    from inspector.engine import sampler_int8
    from inspector.engine.runtime import int8

    insp = Inspector.from_options(**options)
    exported = onnx.ModelProto.FromString(insp.model.explain_bytes)
    forward = onnx_tools.build_forward(exported)
    onnx_tools.load_into(forward, insp.model.path)
    files = sampler_int8.calibration_files(options["runtime"]["calibration_images"])
    cached = int8.read_cached(int8.cache_path(insp.model.path, insp.model.sha256,
                                              sampler_int8.calibration_sha256(insp, files)))
    x = np.random.default_rng(0).standard_normal((chunk, *insp.contract.input_shape[1:])).astype(np.float32)
    f32 = forward.SerializeToString()
    q8 = cached.model.SerializeToString() if cached and cached.accepted else None
    rows = [("onnxruntime float32 (the engine's float32 sampler)", lambda: ort_forward_ms(f32, x)),
            ("onnxruntime float32, pre-packing off (as with shared weights)",
             lambda: ort_forward_ms(f32, x, prepacking=False)),
            ("onnxruntime float32, memory arena off", lambda: ort_forward_ms(f32, x, arena=False)),
            ("onnxruntime float32, 1 thread", lambda: ort_forward_ms(f32, x, threads=1))]
    if q8 is not None:
        rows += [("onnxruntime int8 (the engine's int8 sampler)", lambda: ort_forward_ms(q8, x)),
                 ("onnxruntime int8, spinning off", lambda: ort_forward_ms(q8, x, spinning=False)),
                 ("onnxruntime int8, memory arena off", lambda: ort_forward_ms(q8, x, arena=False)),
                 ("onnxruntime int8, 1 thread", lambda: ort_forward_ms(q8, x, threads=1)),
                 ("onnxruntime int8 graph run as written (float kernels)",
                  lambda: ort_forward_ms(q8, x, fused=False))]
    try:
        import openvino  # noqa: F401

        rows += [("OpenVINO float32", lambda: openvino_forward_ms(f32, x, "f32")),
                 ("OpenVINO bfloat16", lambda: openvino_forward_ms(f32, x, "bf16"))]
        if q8 is not None:
            rows.append(("OpenVINO, the int8 graph", lambda: openvino_forward_ms(q8, x, "f32")))
    except ImportError:
        print("  (OpenVINO not importable: its rows are left out)")
    print(f"\n{title}: the forward pass per masked image at batch {chunk} (median of 3), "
          f"{os.cpu_count()} cores")
    print("  setting                                                   | ms per masked image")
    for name, measure in rows:
        print(f"  {name:<57} | {measure():8.3f}", flush=True)


# ----- the run --------------------------------------------------------------------------------------------
def run_model(name: str, args, work: str) -> None:
    options, images = model_set(name, work, args.images)
    images_path = os.path.join(work, f"{name}_images.npz")
    np.savez(images_path, images=np.stack(images))
    int8_options = {**options, "runtime": {**options["runtime"], "sampler_precision": "int8"}}
    t = time.perf_counter()
    calibration = run_worker({"kind": "calibrate", "options": int8_options})
    print(f"\n{name}: int8 sampler built in {time.perf_counter() - t:.1f} s (a fresh process: load, "
          f"calibrate, check; once per model and calibration set): {calibration['precision']}"
          + (f", first {calibration['float_layers']} weighted layer(s) in float32"
             if calibration["precision"] == "int8" else ""), flush=True)
    if not args.only_forward:
        warmup = name != "resnet50"
        rows = {}
        base = run_worker({"kind": "engine", "options": options, "images": images_path, "warmup": warmup,
                           "targets": None, "out": os.path.join(work, f"{name}_float32.npy")})
        rows["engine, float32 sampler"] = base
        runtimes = ["onnxruntime"] + (["openvino"] if openvino_sampler.available() else [])
        jobs = [(f"engine, int8 sampler on {r}",
                 {"kind": "engine", "warmup": warmup,
                  "options": {**int8_options, "runtime": {**int8_options["runtime"], "sampler_runtime": r}}})
                for r in runtimes]
        if name == "resnet50" and not args.no_torch:
            jobs += [(f"PyTorch SISE, {v}", {"kind": "torch", "variant": v, "chunk": base["chunk"]})
                     for v in ("float32", "channels_last", "channels_last+bf16")]
        for label, job in jobs:
            out = os.path.join(work, f"{name}_{len(rows)}.npy")
            rows[label] = run_worker({**job, "images": images_path, "targets": base["targets"], "out": out})
            rows[label]["maps"] = out
        reference = np.load(os.path.join(work, f"{name}_float32.npy"))
        print(f"{name}: {len(images)} image(s), {base['masks']} masks, chunk {base['chunk']}")
        print("  what                                  | s per image | vs float32 engine | peak RSS MiB "
              "| r(fused)")
        first = statistics.median(base["seconds"])
        for label, row in rows.items():
            seconds = statistics.median(row["seconds"])
            r = 1.0 if "maps" not in row else float(np.mean(
                [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(reference, np.load(row["maps"]))]))
            print(f"  {label:<37} | {seconds:11.2f} | {seconds / first:17.3f} | {row['peak_mib']:12.0f} | "
                  f"{r:.4f}", flush=True)
        if "PyTorch SISE, float32" in rows:
            best = min((statistics.median(r["seconds"]), k) for k, r in rows.items()
                       if k.startswith("PyTorch"))
            mine = min((statistics.median(r["seconds"]), k) for k, r in rows.items() if "int8" in k)
            plain = statistics.median(rows["PyTorch SISE, float32"]["seconds"])
            print(f"  fastest engine ({mine[1]}) / fastest PyTorch ({best[1]}): {mine[0] / best[0]:.3f}; "
                  f"/ PyTorch float32: {mine[0] / plain:.3f}")
    forward_table(name, options, args.chunk)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; not ru_maxrss, which Linux carries over from the
    parent across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def worker(path: str) -> None:
    with open(path) as f:
        job = json.load(f)
    os.unlink(path)
    if job["kind"] == "calibrate":
        from inspector import Inspector

        insp = Inspector.from_options(**job["options"])
        result = {"precision": insp.sampler_precision, "float_layers": 0}
        if insp.int8_calibration is not None:
            from inspector.engine.runtime import int8

            path = int8.cache_path(insp.model.path, insp.model.sha256, insp.int8_calibration)
            cached = int8.read_cached(path)
            result["float_layers"] = len(cached.float_layers)
    else:
        result = engine_worker(job) if job["kind"] == "engine" else torch_worker(job)
    result["peak_mib"] = peak_rss_mib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["example", "lite0", "resnet50"],
                        choices=["example", "lite0", "resnet50"])
    parser.add_argument("--images", type=int, default=1, help="timed images per model")
    parser.add_argument("--chunk", type=int, default=64, help="batch of the forward-pass table")
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    parser.add_argument("--only-forward", action="store_true", help="only the forward-pass tables")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores; calibration pictures for Lite0: "
          f"{', '.join(CALIBRATION_PHOTOS)}")
    work = tempfile.mkdtemp(prefix="sise-int8-speed-")
    for name in args.models:
        run_model(name, args, work)


if __name__ == "__main__":
    main()
