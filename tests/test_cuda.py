"""The CUDA path: the same engine on CUDAExecutionProvider (activations bound on the device, padded
chunks, fp16) against the PyTorch reference and against the CPU provider.

Needs onnxruntime-gpu with a working CUDA; without it every test here is skipped (CI has no GPU).
Run on a GPU machine with `python -m pytest -m gpu`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from .sise_reference import sise_reference
from .test_engine import CPU, inspector_for, pearson, smooth_image

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                 reason="onnxruntime has no CUDAExecutionProvider")]
CUDA = {"providers": ["CUDAExecutionProvider"]}


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_cuda_engine_matches_torch_reference(exported, name):
    model, taps, shape, path = exported(name)
    image = smooth_image(shape, seed=2)
    exp = inspector_for(path, CUDA, chunk_size=32).explain(image)
    assert exp.settings["provider"] == "CUDAExecutionProvider"  # no silent fallback
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    ref_maps, ref_fused, ref_counts = sise_reference(model, taps, x, exp.target)
    assert list(exp.masks_per_layer) == ref_counts and sum(ref_counts) > 20
    for b, ref in enumerate(ref_maps):
        if ref is not None:
            assert pearson(exp.layer_maps[b], ref) >= 0.99, (b, pearson(exp.layer_maps[b], ref))
    assert pearson(exp.saliency, ref_fused) >= 0.99


def test_cuda_agrees_with_cpu_and_padding_changes_nothing(exported):
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=5)
    cpu = inspector_for(path, CPU, chunk_size=7).explain(image, target=3)
    for chunk in (7, 500):  # 7: several chunks, the last one padded; 500: one chunk, padded
        gpu = inspector_for(path, CUDA, chunk_size=chunk).explain(image, target=3)
        assert gpu.masks_per_layer == cpu.masks_per_layer
        np.testing.assert_allclose(gpu.layer_maps, cpu.layer_maps, atol=2e-3)
        assert pearson(gpu.saliency, cpu.saliency) >= 0.999


def test_cuda_fp16_agrees_with_fp32(exported):
    pytest.importorskip("onnxconverter_common")
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=4)
    full = inspector_for(path, CUDA).explain(image, target=5)
    half = inspector_for(path, {**CUDA, "fp16": True}).explain(image, target=5)
    assert half.masks_per_layer == full.masks_per_layer and half.settings["fp16"] is True
    for b in range(len(full.layer_maps)):
        if full.masks_per_layer[b]:
            assert pearson(half.layer_maps[b], full.layer_maps[b]) >= 0.999
    assert pearson(half.saliency, full.saliency) >= 0.99


def test_cuda_mask_scorer_methods_agree_with_cpu(exported):
    """Grad-CAM (explain model only) and RISE (the mask scorer) on CUDA give the CPU provider's maps."""
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=6)
    method = {"rise": {"masks": 200, "grid": 5}, "seed": 3, "chunk_size": 64}
    for name in ("gradcam", "rise"):
        gpu = inspector_for(path, CUDA, **method).explain(image, target=2, method=name)
        cpu = inspector_for(path, CPU, **method).explain(image, target=2, method=name)
        np.testing.assert_allclose(gpu.saliency, cpu.saliency, atol=2e-3)
