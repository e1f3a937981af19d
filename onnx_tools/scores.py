"""The score psi the explained class is measured with: the one place that switches on the score kinds of
:data:`onnx_tools.contract.SCORE_KINDS`, as ONNX nodes (the export's gradient seed, the sampler's per-mask
scores) and in numpy (:func:`scores_of`, the engine's confidences)."""

from __future__ import annotations

import numpy as np

from .contract import SCORE_KINDS, SCORE_OPS
from .errors import ModelInputError
from .gradients.ops.elementwise import sigmoid_slope
from .gradients.ops.softmax import softmax_vjp


def score_op(kind: str) -> str | None:
    """The ONNX op psi applies over the class axis ("Softmax", "Sigmoid"), or None when psi is the class
    output itself (logit, identity).

    Raises:
        ModelInputError: ``kind`` is not one of :data:`~onnx_tools.contract.SCORE_KINDS`.
    """
    if kind not in SCORE_OPS:
        raise ModelInputError(f"score kind '{kind}' is not one of {', '.join(SCORE_KINDS)}")
    return SCORE_OPS[kind]


def emit_score(emit, logits: str, kind: str) -> str:
    """psi(logits) over axis 1 of a [N, K] tensor; returns ``logits`` itself for logit / identity."""
    op = score_op(kind)
    if op == "Softmax":
        return emit.op("Softmax", [logits], axis=1 if emit.opset < 13 else -1)
    if op == "Sigmoid":
        return emit.op("Sigmoid", [logits])
    return logits


def emit_score_seed(emit, logits: str, target: str, kind: str, dtype: np.dtype) -> str:
    """d(loss)/d(logits) for loss = sum(target * psi(logits)), ``logits`` [N, K] and ``target`` of the
    same shape and element type ``dtype``, in forms that keep their digits near saturation (a confidence
    of 1 - 1e-7 leaves ``1 - p`` no correct float32 digit): the softmax's as
    :func:`~onnx_tools.gradients.ops.softmax.softmax_vjp`, the sigmoid's as
    :func:`~onnx_tools.gradients.ops.elementwise.sigmoid_slope`."""
    s = emit_score(emit, logits, kind)
    op = score_op(kind)
    if op == "Softmax":
        return softmax_vjp(emit, s, target, [1], dtype)
    if op == "Sigmoid":
        one = emit.const(np.ones((), dtype=dtype), hint="one")
        return emit.op("Mul", [target, sigmoid_slope(emit, logits, one)])
    return target  # psi is the output itself


def scores_of(logits: np.ndarray, kind: str) -> np.ndarray:
    """psi over the last axis of a model's class output, in numpy (float64 inside, float32 out)."""
    op = score_op(kind)
    z = np.asarray(logits, np.float64)
    if op == "Softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    if op == "Sigmoid":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    return z.astype(np.float32)
