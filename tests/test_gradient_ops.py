"""Per-op finite-difference checks of every registered VJP builder (shapes, broadcasting, attributes)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tools.gradients import supported_ops
from onnx_tools.graph import infer_shapes

from .gradcheck import OpCase, backward_model, check, session

rng = np.random.default_rng(1234)


def smooth(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def tied(*shape, seed=7):
    """Smooth values with the two largest entries along axis 1 equal at every other position (from their
    own generator: the shared one's sequence sets the other cases' values)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    top = np.argsort(x, axis=1)
    first, second = np.take_along_axis(x, top[:, -1:], 1), top[:, -2:-1]
    ties = np.take_along_axis(x, second, 1).copy()
    ties.reshape(-1)[::2] = first.reshape(-1)[::2]
    np.put_along_axis(x, second, ties, 1)
    return x


def away_from(*shape, kinks=(0.0,), margin=0.1, spread=3.0):
    """Values at least ``margin`` away from every kink, so a small step never crosses one."""
    x = rng.uniform(-spread, spread, size=shape)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.sign(x[near] - k + 1e-9) * margin
    return x.astype(np.float32)


def distinct(*shape):
    """All values distinct, 0.05 apart: no ties and no arg-max swaps under a small step."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.05 - n * 0.025).astype(np.float32)


def positive(*shape):
    return (1.0 + np.abs(rng.standard_normal(shape))).astype(np.float32)


def conv(id, x_shape, w_shape, **attrs):
    return OpCase(id, "Conv", ["x", "w", "b"], {"x": smooth(*x_shape), "w": smooth(*w_shape),
                                                 "b": smooth(w_shape[0])}, ["x"], attrs, eps=1.0)


def pool(op, id, x, opset=17, eps=1e-3, **attrs):
    return OpCase(id, op, ["x"], {"x": x}, ["x"], attrs, opset=opset, eps=eps)


def unary(op, x, opset=17, eps=1e-3, **attrs):
    return OpCase(f"{op}-{opset}", op, ["x"], {"x": x}, ["x"], attrs, opset=opset, eps=eps)


def binary(op, a_shape, b_shape, id_suffix="", b=None):
    values = {"a": smooth(*a_shape), "b": b if b is not None else smooth(*b_shape)}
    return OpCase(f"{op}{id_suffix}", op, ["a", "b"], values, ["a", "b"], eps=1e-3 if op == "Div" else 1.0)


def i64(*v):
    return np.array(v, dtype=np.int64)


CASES = [
    # --- Conv: strides, dilations, pads, auto_pad, groups, depthwise, odd sizes (output_padding) ---
    conv("conv-3x3-pad1", (2, 3, 7, 7), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    conv("conv-stride2-asym-pads-odd", (1, 3, 8, 9), (4, 3, 3, 3), strides=[2, 2], pads=[1, 0, 0, 1]),
    conv("conv-dilated-stride2", (1, 2, 11, 10), (3, 2, 3, 3), strides=[2, 2], dilations=[2, 2],
         pads=[2, 1, 2, 1]),
    conv("conv-groups2", (1, 4, 6, 6), (6, 2, 3, 3), group=2, pads=[1, 1, 1, 1]),
    conv("conv-depthwise-stride2", (1, 5, 9, 9), (5, 1, 3, 3), group=5, strides=[2, 2], pads=[1, 1, 1, 1]),
    conv("conv-same-upper-stride2", (1, 2, 7, 7), (3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    conv("conv-same-lower-k4", (1, 2, 8, 8), (3, 2, 4, 4), strides=[2, 2], auto_pad="SAME_LOWER"),
    conv("conv-valid-k2s2-odd", (1, 2, 7, 7), (3, 2, 2, 2), strides=[2, 2], auto_pad="VALID"),
    conv("conv-1x1-stride2", (1, 4, 7, 7), (8, 4, 1, 1), strides=[2, 2]),
    conv("conv-1x1", (2, 4, 5, 6), (8, 4, 1, 1)),
    conv("conv-dilated-stride1-asym", (1, 3, 9, 8), (4, 3, 3, 2), dilations=[2, 3], pads=[2, 1, 1, 3]),
    conv("conv-depthwise-stride1-same", (1, 6, 7, 7), (6, 1, 5, 5), group=6, auto_pad="SAME_UPPER"),
    conv("conv-groups3-rect", (1, 6, 6, 9), (9, 2, 3, 1), group=3, pads=[1, 0, 1, 0]),
    OpCase("conv-no-bias", "Conv", ["x", "w2"], {"x": smooth(1, 2, 5, 5), "w2": smooth(3, 2, 3, 3)},
           ["x"], {"pads": [1, 1, 1, 1]}, eps=1.0),
    # --- Gemm / MatMul ---
    OpCase("gemm-transB", "Gemm", ["a", "b", "c"], {"a": smooth(3, 5), "b": smooth(4, 5), "c": smooth(4)},
           ["a"], {"transB": 1}, eps=1.0),
    OpCase("gemm-transA-alpha-beta-all", "Gemm", ["a", "b", "c"],
           {"a": smooth(5, 3), "b": smooth(5, 4), "c": smooth(1, 4)}, ["a", "b", "c"],
           {"transA": 1, "alpha": 0.5, "beta": 2.0}, eps=1e-3),
    OpCase("gemm-both-trans-opset9", "Gemm", ["a", "b", "c"],
           {"a": smooth(5, 3), "b": smooth(4, 5), "c": smooth(4)}, ["a", "b"],
           {"transA": 1, "transB": 1}, opset=9, eps=1e-3),
    OpCase("matmul-batched-const", "MatMul", ["a", "b"], {"a": smooth(2, 3, 4, 5), "b": smooth(5, 6)},
           ["a"], eps=1.0),
    OpCase("matmul-broadcast-both", "MatMul", ["a", "b"], {"a": smooth(2, 1, 4, 5), "b": smooth(3, 5, 6)},
           ["a", "b"], eps=1e-3),
    # --- arithmetic with broadcasting ---
    binary("Add", (2, 3, 4, 5), (3, 1, 1), "-bcast"),
    binary("Sub", (2, 3, 4, 5), (1, 3, 1, 5), "-bcast"),
    binary("Mul", (2, 3, 4, 5), (2, 3, 1, 1), "-se-style"),
    binary("Div", (2, 3, 4, 5), (3, 4, 1), "-bcast", b=positive(3, 4, 1)),
    OpCase("sum-3-bcast", "Sum", ["a", "b", "c"], {"a": smooth(2, 3, 4), "b": smooth(3, 1), "c": smooth(4)},
           ["a", "b", "c"], eps=1.0),
    unary("Neg", smooth(2, 3), eps=1.0),
    # --- activations ---
    unary("Relu", away_from(2, 3, 5, 5)),
    unary("LeakyRelu", away_from(2, 3, 5, 5), alpha=0.1),
    OpCase("prelu", "PRelu", ["x", "s"], {"x": away_from(2, 3, 4, 4), "s": smooth(3, 1, 1)}, ["x"]),
    unary("Clip", away_from(2, 3, 4, 4, kinks=(0.0, 6.0), spread=9.0), opset=9, min=0.0, max=6.0),
    OpCase("clip-13-inputs", "Clip", ["x", "lo", "hi"],
           {"x": away_from(2, 3, 4, 4, kinks=(0.0, 6.0), spread=9.0),
            "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}, ["x"], opset=13),
    OpCase("clip-13-min-only", "Clip", ["x", "lo"], {"x": away_from(3, 7, kinks=(-1.0,)),
           "lo": np.array(-1.0, np.float32)}, ["x"], opset=13),
    unary("Sigmoid", smooth(2, 3, 4)),
    unary("Tanh", smooth(2, 3, 4)),
    unary("Erf", smooth(2, 3, 4)),
    unary("HardSigmoid", away_from(2, 3, 4, kinks=(-2.5, 2.5), spread=5.0), alpha=0.2, beta=0.5),
    unary("HardSwish", away_from(2, 3, 4, 4, kinks=(-3.0, 3.0), spread=6.0), opset=14),
    unary("Softmax", smooth(2, 5, 3), opset=13, axis=1),
    unary("Softmax", smooth(2, 3, 4), opset=11, axis=1),
    unary("LogSoftmax", smooth(2, 3, 6), opset=13, axis=-1),
    unary("LogSoftmax", smooth(2, 3, 4), opset=11),
    unary("Softmax", tied(2, 5, 3), opset=13, axis=1),  # the dominant-entry forms with tied maxima
    unary("Softmax", tied(2, 5, 3), opset=9, axis=1),
    unary("LogSoftmax", tied(2, 5, 3), opset=13, axis=1),
    unary("LogSoftmax", tied(2, 5, 3), opset=9, axis=1),
    OpCase("batchnorm", "BatchNormalization", ["x", "s", "b", "m", "v"],
           {"x": smooth(2, 3, 4, 4), "s": smooth(3), "b": smooth(3), "m": smooth(3), "v": positive(3)},
           ["x"], {"epsilon": 1e-3}, eps=1.0),
    OpCase("batchnorm-opset9", "BatchNormalization", ["x", "s", "b", "m", "v"],
           {"x": smooth(1, 3, 4, 4), "s": smooth(3), "b": smooth(3), "m": smooth(3), "v": positive(3)},
           ["x"], opset=9, eps=1.0),
    # --- pooling ---
    pool("MaxPool", "maxpool-3x3-s2-p1", distinct(2, 3, 9, 9), kernel_shape=[3, 3], strides=[2, 2],
         pads=[1, 1, 1, 1]),
    pool("MaxPool", "maxpool-2x2-s2-odd", distinct(1, 2, 7, 7), kernel_shape=[2, 2], strides=[2, 2]),
    pool("MaxPool", "maxpool-ceil", distinct(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    pool("MaxPool", "maxpool-dilated", distinct(1, 2, 7, 6), opset=12, kernel_shape=[2, 2], dilations=[2, 2]),
    pool("MaxPool", "maxpool-overlap-s1-same", distinct(1, 2, 6, 6), kernel_shape=[3, 3],
         auto_pad="SAME_UPPER"),
    pool("MaxPool", "maxpool-opset9", distinct(1, 2, 9, 9), opset=9, kernel_shape=[3, 3], strides=[2, 2],
         pads=[1, 1, 1, 1]),
    pool("AveragePool", "avgpool-excl-pad", smooth(2, 3, 9, 9), eps=1.0, kernel_shape=[3, 3], strides=[2, 2],
         pads=[1, 1, 1, 1], count_include_pad=0),
    pool("AveragePool", "avgpool-incl-pad", smooth(1, 3, 9, 8), eps=1.0, kernel_shape=[3, 3], strides=[2, 2],
         pads=[1, 1, 1, 1], count_include_pad=1),
    pool("AveragePool", "avgpool-ceil", smooth(1, 2, 8, 8), eps=1.0, kernel_shape=[3, 3], strides=[2, 2],
         ceil_mode=1),
    pool("AveragePool", "avgpool-2x2-odd", smooth(1, 2, 7, 7), eps=1.0, kernel_shape=[2, 2], strides=[2, 2]),
    pool("GlobalAveragePool", "gap", smooth(2, 3, 5, 4), eps=1.0),
    pool("GlobalMaxPool", "gmp", distinct(2, 3, 5, 4)),
    OpCase("reducemean-attr", "ReduceMean", ["x"], {"x": smooth(2, 3, 4, 5)}, ["x"], {"axes": [2, 3]},
           eps=1.0),
    OpCase("reducemean-18-input-nokeep", "ReduceMean", ["x", "ax"],
           {"x": smooth(2, 3, 4, 5), "ax": i64(-1, 2)}, ["x"], {"keepdims": 0}, opset=18, eps=1.0),
    OpCase("reducesum-13-input", "ReduceSum", ["x", "ax"], {"x": smooth(2, 3, 4), "ax": i64(1)}, ["x"],
           {"keepdims": 0}, opset=13, eps=1.0),
    OpCase("reducesum-11-attr", "ReduceSum", ["x"], {"x": smooth(2, 3, 4)}, ["x"], {"axes": [2]}, opset=11,
           eps=1.0),
    OpCase("reducemax-13-attr-nokeep", "ReduceMax", ["x"], {"x": distinct(2, 3, 4, 5)}, ["x"],
           {"axes": [2, 3], "keepdims": 0}, opset=13),
    OpCase("reducemax-18-input", "ReduceMax", ["x", "ax"], {"x": distinct(2, 3, 4, 5), "ax": i64(-1)}, ["x"],
           opset=18),
    OpCase("reducemin-13-all-but-batch", "ReduceMin", ["x"], {"x": distinct(2, 3, 4)}, ["x"],
           {"axes": [1, 2]}, opset=13),
    # --- normalisations with statistics of x itself ---
    OpCase("layernorm-chw", "LayerNormalization", ["x", "s", "b"], {"x": smooth(2, 3, 4, 5),
           "s": positive(3, 4, 5), "b": smooth(3, 4, 5)}, ["x"], {"axis": 1, "epsilon": 1e-3}),
    OpCase("layernorm-last-axis-no-bias", "LayerNormalization", ["x", "s"], {"x": smooth(2, 3, 4, 5),
           "s": positive(5)}, ["x"]),
    OpCase("instancenorm", "InstanceNormalization", ["x", "s", "b"], {"x": smooth(2, 3, 4, 5),
           "s": positive(3), "b": smooth(3)}, ["x"], {"epsilon": 1e-2}),
    # --- moving values around ---
    OpCase("flatten", "Flatten", ["x"], {"x": smooth(2, 3, 4, 5)}, ["x"], {"axis": 1}, eps=1.0),
    OpCase("reshape", "Reshape", ["x", "s"], {"x": smooth(2, 3, 4, 5), "s": i64(2, -1)}, ["x"], eps=1.0),
    OpCase("squeeze-13", "Squeeze", ["x", "ax"], {"x": smooth(2, 3, 1, 1), "ax": i64(2, 3)}, ["x"], eps=1.0),
    OpCase("squeeze-11", "Squeeze", ["x"], {"x": smooth(2, 3, 1, 1)}, ["x"], {"axes": [3]}, opset=11,
           eps=1.0),
    OpCase("unsqueeze-13", "Unsqueeze", ["x", "ax"], {"x": smooth(2, 3), "ax": i64(2)}, ["x"], eps=1.0),
    OpCase("unsqueeze-11", "Unsqueeze", ["x"], {"x": smooth(2, 3)}, ["x"], {"axes": [0]}, opset=11, eps=1.0),
    OpCase("transpose", "Transpose", ["x"], {"x": smooth(2, 3, 4, 5)}, ["x"], {"perm": [0, 2, 3, 1]},
           eps=1.0),
    OpCase("concat-with-const", "Concat", ["a", "c", "b"], {"a": smooth(2, 3, 4), "c": smooth(2, 2, 4),
           "b": smooth(2, 5, 4)}, ["a", "b"], {"axis": 1}, eps=1.0),
    OpCase("concat-opset9", "Concat", ["a", "b"], {"a": smooth(1, 3, 4), "b": smooth(1, 3, 2)}, ["a", "b"],
           {"axis": 2}, opset=9, eps=1.0),
    OpCase("split-13", "Split", ["x", "s"], {"x": smooth(2, 5, 3), "s": i64(2, 3)}, ["x"], {"axis": 1},
           outputs=2, eps=1.0),
    OpCase("split-11-attr-unused-output", "Split", ["x"], {"x": smooth(2, 6, 3)}, ["x"],
           {"axis": 1, "split": [1, 2, 3]}, opset=11, outputs=3, use_outputs=2, eps=1.0),
    OpCase("slice-13", "Slice", ["x", "st", "en", "ax"], {"x": smooth(2, 5, 4, 6), "st": i64(1, 0),
           "en": i64(4, -1), "ax": i64(1, 3)}, ["x"], eps=1.0),
    OpCase("slice-9", "Slice", ["x"], {"x": smooth(2, 5, 4)}, ["x"], {"starts": [1, -3], "ends": [3, 100],
           "axes": [1, 2]}, opset=9, eps=1.0),
    OpCase("slice-steps-2-3", "Slice", ["x", "st", "en", "ax", "sp"], {"x": smooth(2, 5, 7, 8),
           "st": i64(1, 0), "en": i64(7, 100), "ax": i64(2, 3), "sp": i64(2, 3)}, ["x"], eps=1.0),
    OpCase("slice-negative-steps", "Slice", ["x", "st", "en", "ax", "sp"], {"x": smooth(1, 6, 5, 7),
           "st": i64(-1, 5, 4), "en": i64(-(2 ** 63), 0, 1), "ax": i64(1, 3, 2), "sp": i64(-1, -2, -1)},
           ["x"], eps=1.0),
    OpCase("slice-step-clamped-end", "Slice", ["x", "st", "en", "ax", "sp"], {"x": smooth(2, 3, 9),
           "st": i64(-8), "en": i64(2 ** 62), "ax": i64(-1), "sp": i64(4)}, ["x"], eps=1.0),
    OpCase("tile-spatial-channels", "Tile", ["x", "r"], {"x": smooth(2, 3, 2, 4), "r": i64(1, 2, 3, 1)},
           ["x"], eps=1.0),
    OpCase("tile-opset9", "Tile", ["x", "r"], {"x": smooth(1, 4, 3), "r": i64(1, 1, 2)}, ["x"], opset=9,
           eps=1.0),
    OpCase("pad-negative-crop", "Pad", ["x", "p"], {"x": smooth(2, 3, 6, 5), "p": i64(0, 0, -2, 1, 0, 0, 1,
           -3)}, ["x"], eps=1.0),
    OpCase("pad-13", "Pad", ["x", "p"], {"x": smooth(2, 3, 4, 4), "p": i64(0, 0, 1, 2, 0, 0, 3, 0)}, ["x"],
           eps=1.0),
    OpCase("pad-9", "Pad", ["x"], {"x": smooth(2, 3, 4, 4)}, ["x"], {"pads": [0, 0, 1, 1, 0, 0, 1, 1]},
           opset=9, eps=1.0),
    OpCase("pad-edge-13", "Pad", ["x", "p"], {"x": smooth(2, 3, 4, 5), "p": i64(0, 0, 2, 1, 0, 0, 3, 0)},
           ["x"], {"mode": "edge"}, eps=1.0),
    OpCase("pad-reflect-13", "Pad", ["x", "p"], {"x": smooth(2, 3, 4, 5), "p": i64(0, 0, 3, 1, 0, 0, 2, 4)},
           ["x"], {"mode": "reflect"}, eps=1.0),
    OpCase("pad-reflect-9", "Pad", ["x"], {"x": smooth(1, 2, 5, 4)}, ["x"],
           {"mode": "reflect", "pads": [0, 0, 1, 2, 0, 0, 2, 1]}, opset=9, eps=1.0),
    OpCase("pad-wrap-19", "Pad", ["x", "p"], {"x": smooth(1, 2, 4, 5), "p": i64(0, 0, 2, 3, 0, 0, 1, 2)},
           ["x"], {"mode": "wrap"}, opset=19, eps=1.0),
    OpCase("pad-edge-18-axes", "Pad", ["x", "p", "", "ax"], {"x": smooth(1, 2, 4, 5), "p": i64(2, 1),
           "ax": i64(3)}, ["x"], {"mode": "edge"}, opset=18, eps=1.0),
    OpCase("lrn-size5", "LRN", ["x"], {"x": smooth(2, 7, 3, 4)}, ["x"],
           {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}, eps=1e-3),
    OpCase("lrn-size3-alexnet-defaults", "LRN", ["x"], {"x": smooth(1, 6, 2, 3)}, ["x"], {"size": 3},
           eps=1e-3),
    unary("Identity", smooth(2, 3), eps=1.0),
    unary("Abs", away_from(2, 3, 4)),
    unary("Exp", smooth(2, 3, 4)),
    unary("Log", positive(2, 3, 4)),
    unary("Sqrt", positive(2, 3, 4)),
    OpCase("pow-const-exponent", "Pow", ["x", "p"], {"x": positive(2, 3, 4), "p": np.array(2.5, np.float32)},
           ["x"], eps=1e-3),
    unary("Softplus", smooth(2, 3, 4)),
    unary("Elu", away_from(2, 3, 4), alpha=0.7),
    unary("Selu", away_from(2, 3, 4)),
    unary("Mish", smooth(2, 3, 4), opset=18),
    unary("Gelu", smooth(2, 3, 4), opset=20),
    OpCase("gelu-tanh-20", "Gelu", ["x"], {"x": smooth(2, 3, 4) * 2}, ["x"], {"approximate": "tanh"},
           opset=20),
    unary("Celu", away_from(2, 3, 4), alpha=0.7),
    OpCase("reducel2-keep", "ReduceL2", ["x"], {"x": smooth(2, 3, 4, 5)}, ["x"], {"axes": [1]}, opset=17),
    OpCase("reducel2-18-input-nokeep", "ReduceL2", ["x", "ax"], {"x": smooth(2, 3, 4, 5), "ax": i64(2, 3)},
           ["x"], {"keepdims": 0}, opset=18),
    OpCase("gather-repeated-2d-indices", "Gather", ["x", "i"], {"x": smooth(2, 5, 3), "i": np.array([[0, 2],
           [4, 0]], np.int64)}, ["x"], {"axis": 1}, eps=1.0),
    OpCase("gather-scalar-negative", "Gather", ["x", "i"],
           {"x": smooth(2, 3, 4), "i": np.array(-1, np.int64)}, ["x"], {"axis": 2}, eps=1.0),
    OpCase("expand", "Expand", ["x", "s"], {"x": smooth(2, 1, 4, 1), "s": i64(2, 3, 4, 5)}, ["x"], eps=1.0),
    OpCase("depthtospace-dcr", "DepthToSpace", ["x"], {"x": smooth(2, 8, 3, 4)}, ["x"], {"blocksize": 2},
           eps=1.0),
    OpCase("depthtospace-crd", "DepthToSpace", ["x"], {"x": smooth(2, 8, 3, 4)}, ["x"],
           {"blocksize": 2, "mode": "CRD"}, eps=1.0),
    OpCase("spacetodepth", "SpaceToDepth", ["x"], {"x": smooth(2, 3, 4, 6)}, ["x"], {"blocksize": 2},
           eps=1.0),
    OpCase("max-broadcast", "Max", ["a", "b"],  # the offset keeps a and b apart: no ties between operands
           {"a": distinct(2, 3, 4), "b": distinct(3, 4) + 0.013}, ["a", "b"], eps=1e-3),
    OpCase("min-three", "Min", ["a", "b", "c"],  # offsets keep the three apart: no ties between operands
           {"a": distinct(2, 3), "b": distinct(2, 3) + 0.013, "c": distinct(2, 3) + 0.027}, ["a", "b", "c"],
           eps=1e-3),
    OpCase("dropout-inference", "Dropout", ["x"], {"x": smooth(2, 3)}, ["x"], opset=13, eps=1.0),
    OpCase("cast", "Cast", ["x"], {"x": smooth(2, 3)}, ["x"], {"to": 1}, eps=1.0),
    # --- Resize / Upsample ---
    OpCase("resize-linear-half-pixel-x2", "Resize", ["x", "", "sc"], {"x": smooth(1, 2, 5, 6),
           "sc": np.array([1, 1, 2, 2], np.float32)}, ["x"], {"mode": "linear"}, opset=13, eps=1.0),
    OpCase("resize-linear-align-corners-sizes", "Resize", ["x", "", "", "sz"], {"x": smooth(1, 2, 5, 6),
           "sz": i64(1, 2, 9, 7)}, ["x"],
           {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=13, eps=1.0),
    OpCase("resize-linear-downscale-pytorch", "Resize", ["x", "", "sc"], {"x": smooth(1, 2, 8, 8),
           "sc": np.array([1, 1, 0.5, 0.5], np.float32)}, ["x"],
           {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opset=13, eps=1.0),
    OpCase("resize-nearest-asymmetric-floor", "Resize", ["x", "", "sc"], {"x": smooth(1, 2, 4, 5),
           "sc": np.array([1, 1, 2, 3], np.float32)}, ["x"],
           {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
           opset=13, eps=1.0),
    OpCase("resize-nearest-default-sizes", "Resize", ["x", "", "", "sz"], {"x": smooth(1, 2, 4, 5),
           "sz": i64(1, 2, 7, 9)}, ["x"], opset=13, eps=1.0),
    OpCase("resize-opset11-roi", "Resize", ["x", "roi", "sc"], {"x": smooth(1, 2, 4, 4),
           "roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 2], np.float32)}, ["x"],
           {"mode": "linear"}, opset=11, eps=1.0),
    OpCase("upsample-opset9", "Upsample", ["x", "sc"], {"x": smooth(1, 2, 3, 4),
           "sc": np.array([1, 1, 2, 2], np.float32)}, ["x"], opset=9, eps=1.0, ir_version=4),
    unary("Reciprocal", away_from(2, 3, 4, kinks=(0.0,), margin=0.5)),
    unary("ThresholdedRelu", away_from(2, 3, 4, kinks=(0.7,)), opset=10, alpha=0.7),
    unary("Shrink", away_from(2, 3, 4, kinks=(-0.4, 0.4)), opset=9, lambd=0.4, bias=0.2),
    unary("Softsign", smooth(2, 3, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case):
    check(case)


QDQ_CASES = [  # (id, integer type, scale, zero point, axis): a pair quantizing to it and back
    ("uint8-per-tensor", np.uint8, np.float32(0.02), np.uint8(128), None),
    ("int8-per-channel", np.int8, np.array([0.01, 0.03, 0.02], np.float32), np.array([0, 5, -7], np.int8), 1),
    ("int8-relu-folded", np.int8, np.float32(0.01), np.int8(-128), None),  # zero point at qmin: a ReLU
]


@pytest.mark.parametrize("case", QDQ_CASES, ids=[c[0] for c in QDQ_CASES])
def test_quantize_dequantize_pairs_match_torch_fake_quantize(case):
    """QuantizeLinear -> DequantizeLinear is piecewise constant, so no finite difference applies; the
    straight-through gradient is checked against torch's fake_quantize autograd, over values that
    saturate on both sides."""
    torch = pytest.importorskip("torch")
    _, dtype, scale, zero, axis = case
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    x = np.random.default_rng(5).uniform(-1.6, 1.6, (2, 3, 4, 5)).astype(np.float32)
    x *= np.max(scale) * (hi - lo) / 2
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              [numpy_helper.from_array(np.asarray(scale), "s"),
                               numpy_helper.from_array(np.asarray(zero), "z")])
    fwd = infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    g = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    y, grad = session(backward_model(fwd, ["x"])).run(["y", "grad_x"], {"x": x, "g": g})
    xt = torch.from_numpy(x).requires_grad_()
    if axis is None:
        yt = torch.fake_quantize_per_tensor_affine(xt, float(scale), int(zero), int(lo), int(hi))
    else:
        yt = torch.fake_quantize_per_channel_affine(xt, torch.from_numpy(scale), torch.from_numpy(
            zero.astype(np.int32)), axis, int(lo), int(hi))
    (yt * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-6)
    passed = grad != 0
    assert 0.2 < passed.mean() < 0.9  # some values saturate, most do not
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-6)


def test_every_registered_op_has_a_case():
    covered = {c.op for c in CASES} | {"QuantizeLinear", "DequantizeLinear"}  # the fake_quantize test
    assert set(supported_ops()) <= covered, sorted(set(supported_ops()) - covered)
