"""Peak memory and time of one full SISE explanation (`quality`) on the CPU, per model, in one run:
the bundled defect model (128x128), ResNet-50 and VGG16 (224x224, ImageNet-sized heads, random weights),
each with the engine's defaults (the chunk size from runtime.memory_budget_mb, weights memory-mapped from one
file shared by the sessions) and with the settings before them (chunk 64, weights copied into each session).

    python benchmarks/memory.py                 # all three models, both settings (about 10 min on 2 cores)
    python benchmarks/memory.py --models vgg16 --images 2

Every measurement runs in a fresh process. Peak RSS is the kernel's high-water mark (it counts a page of the
shared weights file once per session that maps it); peak PSS is sampled every 20 ms and counts each page once
(what the machine actually gives the process). `per mask` is the growth of PSS while explaining, divided by
the chunk size, against the estimate the chunk size is derived from. Needs the dev extra (torch) to build the
two ImageNet-sized models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLE = os.path.join(ROOT, "inspector", "example", "defect_resnet.sise.onnx")

BUILD = """
import sys, onnx, torch, torch.nn as nn
sys.path.insert(0, {root!r})
from tests.models import VGG, VGG16_CFG, Bottleneck, ResNet, export_onnx, randomize_bn
from onnx_tools import export_model
torch.manual_seed(0)
if {name!r} == "vgg16":
    model = VGG(VGG16_CFG, num_classes=1000, spatial_out=7)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(),
                                     nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))
else:
    model = randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000))
onnx.save(export_model(export_onnx(model.eval(), (1, 3, 224, 224))).model, {out!r})
"""

MEASURE = """
import json, resource, sys, threading, time
import numpy as np
sys.path.insert(0, {root!r})
import inspector.engine.runtime.weights
from inspector import Inspector
from inspector.engine.runtime.memory import PER_MASK_FACTOR

def pss():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024

peak = [0.0]
def sample():
    while True:
        peak[0] = max(peak[0], pss())
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
if {old!r}:
    inspector.engine.runtime.weights.MIN_MODEL_BYTES = 1 << 62  # weights copied into each session, as before
size = {size!r}
insp = Inspector.from_options(model={model!r}, preprocess={{"size": [size, size]}}, method={method!r},
                              runtime={{"providers": ["CPUExecutionProvider"]}})
time.sleep(0.1)
loaded, load_peak = pss(), peak[0]
peak[0] = 0.0
rng = np.random.default_rng(0)
seconds = []
for _ in range({images}):
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    start = time.perf_counter()
    insp.explain(image)
    seconds.append(time.perf_counter() - start)
estimate = PER_MASK_FACTOR * insp.model.largest_tensor_bytes / 2**20
print(json.dumps({{"chunk": insp.method.chunk_size, "estimate_mb": estimate,
                  "loaded": loaded, "load_peak": load_peak, "explain_peak": peak[0],
                  "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": sorted(seconds)[len(seconds) // 2]}}))
"""


def run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["example", "resnet50", "vgg16"])
    parser.add_argument("--images", type=int, default=1, help="timed images per measurement (median)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="sise-memory-")
    print(f"{'model':<9} {'settings':<22} {'chunk':>5} {'s/image':>8} {'loaded':>7} {'peak PSS':>9} "
          f"{'peak RSS':>9} {'per mask':>9} {'estimate':>9}")
    for name in args.models:
        model, size = EXAMPLE, 128
        if name != "example":
            model, size = os.path.join(folder, f"{name}.sise.onnx"), 224
            built = subprocess.run([sys.executable, "-c", BUILD.format(root=ROOT, name=name, out=model)],
                                   check=False, capture_output=True, text=True)
            if built.returncode != 0:
                sys.exit(built.stderr[-2000:])
        times = {}
        for label, old, method in (("before: chunk 64, copies", True, {"chunk_size": 64}),
                                   ("defaults", False, {})):
            r = run(MEASURE.format(root=ROOT, old=old, size=size, model=model, method=method,
                                   images=args.images))
            times[label] = r["seconds"]
            peak = max(r["load_peak"], r["explain_peak"])
            per_mask = (r["explain_peak"] - r["loaded"]) / r["chunk"]
            print(f"{name:<9} {label:<22} {r['chunk']:>5} {r['seconds']:>8.2f} {r['loaded']:>6.0f}M "
                  f"{peak:>8.0f}M {r['rss_peak']:>8.0f}M {per_mask:>8.1f}M {r['estimate_mb']:>8.1f}M",
                  flush=True)
        ratio = times["defaults"] / times["before: chunk 64, copies"]
        print(f"{name:<9} time with the defaults / before: {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
