"""Regions from maps with known components."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.engine.method.regions import find_regions


def two_blobs():
    s = np.zeros((60, 80), np.float32)
    s[10:20, 5:25] = 0.9  # 200 px
    s[40:45, 60:64] = 0.6  # 20 px
    s[0, 79] = 1.0  # 1 px speck
    return s


def test_components_boxes_and_stats():
    regions = find_regions(two_blobs(), how="fixed", value=0.5, min_area=4)
    assert [r.box for r in regions] == [(5, 10, 25, 20), (60, 40, 64, 45)]
    big = regions[0]
    assert big.area == 200 and big.area_fraction == pytest.approx(200 / 4800)
    assert big.centroid == pytest.approx((14.5, 14.5)) and big.peak == pytest.approx(0.9)
    assert big.mean == pytest.approx(0.9)


def test_min_area_and_thresholds():
    s = two_blobs()
    assert len(find_regions(s, how="fixed", value=0.5, min_area=1)) == 3
    assert len(find_regions(s, how="fixed", value=0.7, min_area=4)) == 1  # the 0.6 blob falls below
    assert len(find_regions(s, how="otsu", min_area=4)) == 2
    assert find_regions(s, how="percentile", value=99.9, min_area=1)[0].box == (79, 0, 80, 1)
    assert find_regions(np.zeros((8, 8)), how="otsu") == []
