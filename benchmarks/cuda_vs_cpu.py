"""How far the CUDA provider's SISE maps are from the CPU provider's, per setting, on the test fixtures:
per model and setting, the kept maps (equal or not), the largest absolute difference of any layer map,
the smallest per-layer Pearson r and the fused map's r.

    python benchmarks/cuda_vs_cpu.py            # needs onnxruntime-gpu, a GPU and torch (fixtures)
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from inspector import Inspector
from onnx_tools import export_model

IDENTITY = {"resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0], "input_dtype": "float"}
SETTINGS = {  # name -> runtime
    "cuda fp32 (engine default, use_tf32=0)": {"providers": ["CUDAExecutionProvider"]},
    "cuda fp32 with TF32 (use_tf32=1)": {"providers": ["CUDAExecutionProvider"],
                                         "cuda_options": {"use_tf32": 1}},
    "cuda fp16 (sampler with TF32)": {"providers": ["CUDAExecutionProvider"], "fp16": True},
}


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main() -> None:
    import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu needs, where they come with torch)

    from tests.models import export_onnx, fixture
    from tests.test_engine import smooth_image

    folder = tempfile.mkdtemp()
    print("model | setting | same kept maps | max |layer map diff| | min layer r | fused r")
    for name in ("resnet18", "vgg16"):
        model, _, shape = fixture(name)
        path = os.path.join(folder, f"{name}.sise.onnx")
        onnx.save(export_model(export_onnx(model, shape)).model, path)
        for seed, target in ((2, None), (5, 3)):
            image = smooth_image(shape, seed=seed)
            cpu = Inspector.from_options(model=path, preprocess=IDENTITY,
                                         runtime={"providers": ["CPUExecutionProvider"]},
                                         method={"chunk_size": 7}).explain(image, target=target)
            for label, runtime in SETTINGS.items():
                insp = Inspector.from_options(model=path, preprocess=IDENTITY, runtime=runtime,
                                              method={"chunk_size": 7})
                gpu = insp.explain(image, target=target)
                kept = [b for b, n in enumerate(cpu.masks_per_layer) if n]
                rs = [pearson(gpu.layer_maps[b], cpu.layer_maps[b]) for b in kept]
                print(f"{name} seed {seed} | {label} ({insp.sessions.provider}) | "
                      f"{gpu.masks_per_layer == cpu.masks_per_layer} | "
                      f"{float(np.abs(gpu.layer_maps - cpu.layer_maps).max()):.4f} | {min(rs):.4f} | "
                      f"{pearson(gpu.saliency, cpu.saliency):.4f}", flush=True)


if __name__ == "__main__":
    main()
