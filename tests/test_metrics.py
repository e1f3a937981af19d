"""Metrics on hand-made maps and masks with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.quality import metrics as M


def square_mask(n=10, top=2, left=2, size=4):
    g = np.zeros((n, n), bool)
    g[top:top + size, left:left + size] = True
    return g


def test_ebpg():
    g = square_mask()  # 16 pixels
    s = np.zeros((10, 10))
    s[g] = 1.0
    s[0, 0] = 4.0  # 16 inside, 4 outside
    assert M.ebpg(s, g) == pytest.approx(16 / 20)
    assert M.ebpg(np.zeros((10, 10)), g) == 0.0


def test_miou_top_20_percent():
    g = square_mask()  # 16 pixels
    s = np.arange(100, dtype=float).reshape(10, 10)  # top 20 % = rows 8 and 9 (20 pixels)
    assert M.miou(s, g) == 0.0
    s2 = np.zeros((10, 10))
    s2[g] = 2.0
    s2[0, :4] = 1.0  # top-20: the 16 mask pixels, then 4 more
    assert M.miou(s2, g) == pytest.approx(16 / 20)


def test_bbox_top_g_pixels():
    g = square_mask()  # |G| = 16
    s = np.zeros((10, 10))
    s[2:6, 2:5] = 1.0  # 12 inside
    s[9, 0:4] = 1.0  # 4 outside, equally high
    assert M.bbox(s, g) == pytest.approx(12 / 16)


def test_top_mask_breaks_ties_to_exact_count():
    assert M.top_mask(np.ones((4, 4)), 5).sum() == 5
    assert M.top_fraction(np.ones((10, 10)), 0.15).sum() == 15


def test_drop_and_increase():
    s = np.zeros((10, 10))
    s[:3, :5] = 1.0  # top 15 % = these 15 pixels

    def score_fn(value):
        def score(masks):
            assert masks.shape == (1, 10, 10) and masks.sum() == 15 and masks[0, :3, :5].all()
            return np.array([value])
        return score
    assert M.drop_increase(s, 0.8, score_fn(0.6)) == (pytest.approx(0.25), False)
    assert M.drop_increase(s, 0.8, score_fn(0.9)) == (0.0, True)


def test_deletion_insertion_on_a_linear_model():
    """With score = mean of the mask over the 'evidence' pixels, revealing the evidence first gives
    a curve that rises to 1 after the evidence share; deletion mirrors it."""
    g = square_mask(10, 0, 0, 5)  # 25 % of the image is evidence
    perfect = g.astype(float)

    def score(masks):
        return masks[:, g].mean(axis=1)
    deletion, insertion = M.deletion_insertion(perfect, score, steps=4)
    # reveal 0, 25, 50, 75, 100 % of pixels: insertion scores 0, 1, 1, 1, 1; deletion 1, 0, 0, 0, 0
    assert insertion == pytest.approx(M.auc([0, 1, 1, 1, 1])) == pytest.approx(0.875)
    assert deletion == pytest.approx(0.125)
    worst_del, worst_ins = M.deletion_insertion(1.0 - perfect, score, steps=4)
    assert worst_del > deletion and worst_ins < insertion
