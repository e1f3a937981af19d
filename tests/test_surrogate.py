"""The sampled presets (``method.score_fraction`` < 1): which maps are scored, the predicted scores of the
others, the masks added on the host, and the engine's use of them (determinism, chunk size and batching
independence, padding). The end-to-end check against the PyTorch SISE is in test_engine.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from inspector.engine.method import surrogate
from inspector.engine.methods import sise as sise_method
from inspector.errors import ConfigError

from .test_batching import assert_same, example, photos

torch = pytest.importorskip("torch")


def clustered(seed: int = 0, clusters: int = 5, per: int = 8, dims: int = 49) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (clusters, dims))
    points = np.concatenate([c + 0.05 * rng.standard_normal((per, dims)) for c in centres])
    return points[rng.permutation(len(points))]


def test_scored_count_by_hand():
    third = [surrogate.scored_count(n, 1 / 3) for n in (0, 1, 2, 5, 6, 9, 10, 454)]
    assert third == [0, 1, 2, 2, 2, 3, 3, 151]
    assert [surrogate.scored_count(n, 0.1) for n in (3, 19, 20, 313)] == [2, 2, 2, 31]
    assert surrogate.scored_count(7, 1.0) == 7


def test_choose_matches_an_independent_kmeans_and_is_exact_in_count():
    from .sise_reference import _kmeans_representatives

    for seed, count in ((0, 5), (1, 7), (2, 12), (3, 3), (4, 20), (5, 30)):
        f = clustered(seed)
        chosen = surrogate.choose(f, count)
        assert len(chosen) == len(set(chosen.tolist())) == count and list(chosen) == sorted(chosen)
        assert chosen.tolist() == _kmeans_representatives(torch.from_numpy(f), count)
        assert np.array_equal(chosen, surrogate.choose(f.copy(), count))  # deterministic
    f = clustered(4, clusters=5)
    labels = np.argmin(((f[:, None] - f[surrogate.choose(f, 5)][None]) ** 2).sum(-1), 1)
    assert len(set(labels.tolist())) == 5  # five well-separated clusters: one representative in each
    assert surrogate.choose(f, len(f) + 3).tolist() == list(range(len(f)))
    same = np.zeros((6, 4))  # identical maps: every cluster but one is empty; topped up to the count
    assert len(surrogate.choose(same, 4)) == 4


def test_predict_matches_an_independent_gaussian_process_and_keeps_measured_scores():
    from .sise_reference import _gp_scores

    rng = np.random.default_rng(1)
    f = clustered(1)
    known = sorted(rng.choice(len(f), 12, replace=False).tolist())
    s = rng.uniform(0, 1, 12)
    predicted = surrogate.predict(f, np.array(known), s)
    expected = _gp_scores(torch.from_numpy(f), known, torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(predicted, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(predicted[known], s)
    assert np.allclose(surrogate.predict(f, np.array(known), np.full(12, 0.7)), 0.7)  # a constant stays
    twin = np.vstack([f, f[known[3]] + 1e-9])  # a map next to a measured one gets (almost) its score
    assert surrogate.predict(twin, np.array(known), s)[-1] == pytest.approx(s[3], abs=0.01)
    assert np.allclose(surrogate.predict(f, np.array(known[:1]), s[:1]), s[0])  # one score: its value


def test_predict_takes_its_length_from_distinct_maps_and_stays_in_the_measured_range():
    from .sise_reference import _gp_scores

    rng = np.random.default_rng(4)
    f = clustered(3, clusters=6, per=10)
    known = sorted(rng.choice(len(f), 40, replace=False).tolist())  # many: BLAS's matrix-product path
    s = rng.uniform(0, 1, 40)
    np.testing.assert_allclose(surrogate.predict(f, np.array(known), s),
                               _gp_scores(torch.from_numpy(f), known, torch.from_numpy(s)).numpy(),
                               rtol=1e-9, atol=1e-12)
    # Rescaled copies of one map have equal features up to rounding: they are one map to the kernel's
    # length. Eight measured copies of A (0.1) and one B (0.9): an unmeasured copy of A is A's score.
    a, b = rng.uniform(0, 1, (2, 7, 7))
    acts = np.stack([a * k + k for k in range(1, 9)] + [b, 10 * a - 3])
    features = surrogate.map_features(acts)
    predicted = surrogate.predict(features, np.arange(9), np.array([0.1] * 8 + [0.9]))
    assert predicted[-1] == pytest.approx(0.1, abs=1e-3)
    for seed in range(20):  # never beyond the measured scores (a probability's range stays a probability)
        r = np.random.default_rng(seed)
        chosen = np.sort(r.choice(len(f), 8, replace=False))
        scores = r.choice([0.0, 1.0], 8) * 0.98 + 0.01
        out = surrogate.predict(f, chosen, scores)
        assert scores.min() <= out.min() and out.max() <= scores.max()


def test_a_block_without_selected_maps_is_skipped_as_in_full_sise(monkeypatch):
    """The first block keeps no map (a selection that returns none for it; a real high-contrast sample
    did this only through float32 denormals in the softmax gradient, which some CPUs flush to zero)."""
    import cv2

    path = os.path.join(os.path.dirname(__file__), "..", "inspector", "example", "samples", "crack.png")
    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    calls = []
    select = sise_method.select_maps

    def first_block_keeps_nothing(alpha, spread, **options):
        calls.append(len(alpha))
        kept = select(alpha, spread, **options)
        return kept[:0] if len(calls) % 5 == 1 else kept  # 5 blocks, selected in order per image

    monkeypatch.setattr(sise_method, "select_maps", first_block_keeps_nothing)
    full = example(preset="quality").explain(image, target="crack")
    assert full.masks_per_layer[0] == 0 and min(full.masks_per_layer[1:]) > 0 and not full.layer_maps[0].any()
    for preset in ("balanced", "fast"):
        engine = example(preset=preset)
        sampled = engine.explain(image, target="crack")
        assert sampled.masks_per_layer[0] == 0 and not sampled.layer_maps[0].any()  # as in full SISE
        fraction = engine.method.score_fraction
        assert sampled.masks_per_layer == tuple(surrogate.scored_count(k, fraction)
                                                for k in full.masks_per_layer)
        assert np.isfinite(sampled.saliency).all() and sampled.saliency.max() == 1.0
    monkeypatch.setattr(sise_method, "select_maps", select)
    none = example(preset="balanced", mu=1.0).explain(image)  # alpha > max(alpha): no block keeps a map
    assert sum(none.masks_per_layer) == 0 and not none.saliency.any()


def test_maps_with_inf_or_nan_are_not_selected():
    from inspector.engine.method.selection import select_maps

    alpha = np.array([0.5, 0.9, 0.2, 0.7])
    spread = np.array([1.0, np.inf, np.nan, 2.0])
    assert select_maps(alpha, spread, mu=0.0, adaptive=False, cap=None).tolist() == [3, 0]


def test_a_smooth_score_is_predicted_from_a_third_of_the_maps():
    f = clustered(2, clusters=6, per=10)
    truth = f[:, :10].mean(1)  # a score that depends smoothly on the map
    chosen = surrogate.choose(f, 20)
    predicted = surrogate.predict(f, chosen, truth[chosen])
    assert np.corrcoef(predicted, truth)[0, 1] > 0.95
    assert np.abs(predicted - truth).mean() < 0.5 * np.abs(truth[chosen].mean() - truth).mean()


def test_weighted_masks_equal_torch_bilinear_masks():
    import torch.nn.functional as F

    acts = np.random.default_rng(3).standard_normal((4, 5, 7)).astype(np.float32)
    acts[2] = 1.0  # a constant map adds nothing
    w = np.array([0.2, -1.0, 5.0, 0.7])
    got = surrogate.weighted_masks(acts, w, (24, 30))
    up = F.interpolate(torch.from_numpy(acts)[None].double(), size=(24, 30), mode="bilinear",
                       align_corners=False)[0]
    expected = torch.zeros(24, 30, dtype=torch.float64)
    for k in (0, 1, 3):
        m = (up[k] - up[k].min()) / (up[k].max() - up[k].min())
        expected += w[k] * m / m.sum()
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-9)


def test_score_fraction_is_checked_and_one_is_full_sise():
    for bad in (0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="method.score_fraction"):
            example(score_fraction=bad)
    image = photos(1)[0]
    full, one = example(preset="quality").explain(image), example(preset="balanced", score_fraction=1.0)
    assert one.method.score_fraction == 1.0
    same = one.explain(image, target=full.target)
    assert example(preset="fast").settings()["score_fraction"] == 0.1  # what a sidecar records
    assert same.masks_per_layer == full.masks_per_layer
    np.testing.assert_allclose(same.saliency, full.saliency, atol=1e-6)


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_sampled_presets_are_deterministic_and_independent_of_chunks_and_batches(preset, monkeypatch):
    images = photos(4)
    base = example(preset=preset, chunk_size=64)
    alone = [base.explain(im) for im in images]
    assert_same(alone, [base.explain(im) for im in images])  # the same maps on a second run
    assert_same(alone, [example(preset=preset, chunk_size=3).explain(im) for im in images])
    assert_same(alone, example(preset=preset, chunk_size=5).explain_batch(images, batch_images=3))
    monkeypatch.setattr(sise_method, "PAD_DEVICES", ("cpu",))  # CUDA's padded chunks: padding is not scored
    assert_same(alone, example(preset=preset, chunk_size=5).explain_batch(images, batch_images=3))
    full = example(preset="quality").explain(images[0], target=alone[0].target)
    fraction = base.method.score_fraction
    assert sum(alone[0].masks_per_layer) <= fraction * full.total_masks + 2 * len(full.masks_per_layer)
    assert np.corrcoef(alone[0].saliency.ravel(), full.saliency.ravel())[0, 1] > 0.8
