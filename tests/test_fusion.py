"""SISE's fusion: the paper's Otsu cascade and the soft gate (method.fusion: soft) that tends to it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from inspector.engine.method.fusion import fuse, gate
from inspector.engine.method.otsu import otsu_threshold
from inspector.errors import ConfigError

from .test_batching import example, photos


def layer_maps(seed: int = 0, blocks: int = 4, size: int = 32) -> list[np.ndarray]:
    """Smooth [0, 1] maps with blobs at different places (continuous values: no pixel on a threshold)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(blocks):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + 0.05 * rng.random((size, size))
        out.append(((m - m.min()) / (m.max() - m.min())).astype(np.float32))
    return out


def test_the_paper_fusion_by_hand():
    """E = V1; E = (E + V2) * [V2 > Otsu(V2)]; min-max, on a 1 x 4 example."""
    v1 = np.array([[0.0, 0.2, 0.6, 1.0]], np.float32)
    v2 = np.array([[0.0, 0.118, 0.9, 1.0]], np.float32)
    t = otsu_threshold(v2)  # splits {0, 0.118} from {0.9, 1}, at the centre of 0.118's histogram bin
    assert 0.118 < t < 0.9
    np.testing.assert_allclose(fuse([v1, v2], (1, 4)), [[0.0, 0.0, 1.5 / 2.0, 1.0]], atol=1e-6)


def test_the_soft_gate_by_hand():
    v = np.array([[0.0, 0.1, 0.9, 1.0]], np.float32)
    t, s = otsu_threshold(v), float(np.std(v))
    expected = [1.0 / (1.0 + math.exp(-(x - t) / (0.5 * s))) for x in v[0]]
    np.testing.assert_allclose(gate(v, "soft", 0.5)[0], expected, rtol=1e-5)
    assert gate(np.full((2, 2), 0.3, np.float32), "soft", 0.5).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # flat


def test_the_soft_fusion_tends_to_the_papers_as_its_width_goes_to_zero():
    for seed in range(5):
        maps = layer_maps(seed)
        paper = fuse(maps, (32, 32))
        gaps = [float(np.abs(fuse(maps, (32, 32), "soft", w) - paper).max()) for w in (1.0, 0.1, 1e-2, 1e-6)]
        assert gaps[0] > 0.01  # a real difference at a wide gate
        assert all(a >= b for a, b in itertools.pairwise(gaps)), gaps  # shrinking with the width
        assert gaps[-1] < 1e-6, gaps


def test_soft_fusion_properties():
    maps = layer_maps(3)
    soft = fuse(maps, (32, 32), "soft", 0.5)
    assert soft.dtype == np.float32 and soft.min() == 0.0 and soft.max() == 1.0
    np.testing.assert_array_equal(soft, fuse(maps, (32, 32), "soft", 0.5))  # deterministic
    assert fuse([None, None], (4, 5), "soft", 0.5).shape == (4, 5)
    np.testing.assert_array_equal(fuse([None, maps[0], None], (32, 32), "soft", 0.5),
                                  fuse([maps[0]], (32, 32), "soft", 0.5))
    g = gate(maps[1], "soft", 0.5)  # monotone in the layer map's value
    order = np.argsort(maps[1].ravel())
    assert np.all(np.diff(g.ravel()[order]) >= 0)


def test_the_engine_fuses_its_layer_maps_with_the_configured_fusion_at_any_chunk_size():
    images = photos(2)
    soft = example(fusion="soft", fusion_width=0.5, chunk_size=7)
    wide = example(fusion="soft", fusion_width=0.5, chunk_size=64)
    paper = example(chunk_size=64)
    for image in images:
        a, b, p = soft.explain(image), wide.explain(image), paper.explain(image)
        np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-5)  # chunk-size independent
        np.testing.assert_allclose(a.layer_maps, p.layer_maps, atol=1e-5)  # the fusion changes only fusing
        layers = [m if n else None for m, n in zip(a.layer_maps, a.masks_per_layer)]
        np.testing.assert_allclose(a.saliency, fuse(layers, a.saliency.shape, "soft", 0.5), atol=1e-6)
        assert not np.allclose(a.saliency, p.saliency, atol=1e-3)


def test_fusion_settings():
    from inspector.jobs.record import result_settings

    with pytest.raises(ConfigError, match="fusion_width: must be a number > 0"):
        example(fusion="soft", fusion_width=0)
    with pytest.raises(ConfigError, match="fusion"):
        example(fusion="blurry")
    # the paper's fusion keeps the settings (and results) stored before the option existed
    assert "fusion" not in result_settings(example())["method"]
    assert "fusion_width" not in result_settings(example(fusion_width=0.9))["method"]
    method = result_settings(example(fusion="soft", fusion_width=0.9))["method"]
    assert method["fusion"] == "soft" and method["fusion_width"] == 0.9
