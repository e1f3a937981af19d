"""psi in numpy (the engine's confidences) against values worked out by hand, and the refusal of an
unknown score kind: the same switch the export's gradient seed and the sampler use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_tools import SCORE_KINDS, scores_of
from onnx_tools.errors import ModelInputError


def test_scores_by_hand():
    z = np.array([0.0, math.log(3.0)], np.float32)
    assert scores_of(z, "softmax") == pytest.approx([0.25, 0.75])
    assert scores_of(np.array([0.0, math.log(3.0)]), "sigmoid") == pytest.approx([0.5, 0.75])
    assert scores_of(z, "logit") == pytest.approx(z) and scores_of(z, "identity") == pytest.approx(z)
    batch = np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]])  # large logits do not overflow
    assert np.allclose(scores_of(batch, "softmax"), [[0.5, 0.5], [0.25, 0.75]])
    assert set(SCORE_KINDS) == {"softmax", "sigmoid", "logit", "identity"}
    with pytest.raises(ModelInputError, match="not one of"):
        scores_of(z, "tanh")
