"""Every operator of the default ONNX domain, and what the export does with it on the path from the first
block to the class scores: differentiates it, never meets it there (its outputs are shapes, indices,
booleans or integers), or refuses it, and why. ``python -m onnx_tools ops`` prints the table
(docs/operators.md is that output; a test keeps the two equal).
"""

from __future__ import annotations

import onnx.defs

from .gradients.registry import supported_ops
from .graph import SHAPE_OPS

# Never on the gradient path: their outputs are shapes, indices, booleans or integers (or do not depend
# on the image at all), so the export does not differentiate through them.
NO_GRADIENT = SHAPE_OPS | {
    "Constant", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
    "IsInf", "IsNaN", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BitCast",
    "NonMaxSuppression", "HammingWindow", "HannWindow", "BlackmanWindow", "MelWeightMatrix",
}

# Refused on the gradient path, by reason (any op not listed anywhere: "no gradient builder yet").
REFUSED = {
    "piecewise constant: its gradient is zero almost everywhere, so blocks before it would explain nothing":
        {"Round", "Ceil", "Floor", "Sign", "Hardmax", "Mod"},
    "control flow: subgraphs are not differentiated; name blocks after them with --blocks":
        {"If", "Loop", "Scan", "SequenceMap"},
    "integer arithmetic (onnxruntime's QOperator format, dynamic quantization): export the float model, or "
    "quantize it in QDQ format": {
        "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"},
    "random: the explanation would change from run to run (refused at export)": {
        "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"},
    "sequences, optionals, strings and images: not tensors of a classifier's forward pass": {
        "ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
        "SequenceInsert", "SequenceLength", "SplitToSequence", "Optional", "OptionalGetElement",
        "OptionalHasElement", "StringConcat", "StringNormalizer", "StringSplit", "RegexFullMatch",
        "TfIdfVectorizer", "ImageDecoder"},
    "training losses: not part of an inference graph": {
        "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"},
    "recurrent and attention layers: not in CNN classifiers this tool explains": {
        "RNN", "GRU", "LSTM", "Attention", "LinearAttention", "RotaryEmbedding", "CausalConvWithState"},
}


NEVER_NOTE = "its outputs are shapes, indices, booleans or integers, or do not depend on the image"
NO_BUILDER = "no gradient builder yet; name blocks after it with --blocks"


def status_table() -> list[tuple[str, str, str]]:
    """(op, status, note) for every operator of the default domain, sorted by name."""
    supported = set(supported_ops())
    reasons = {op: why for why, ops in REFUSED.items() for op in ops}
    rows = []
    for op in sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}):
        if op in supported:
            rows.append((op, "differentiated", ""))
        elif op in NO_GRADIENT:
            rows.append((op, "never on the path", NEVER_NOTE))
        else:
            rows.append((op, "refused", reasons.get(op, NO_BUILDER)))
    return rows


def markdown() -> str:
    rows = status_table()
    counts = {s: sum(1 for _, status, _ in rows if status == s)
              for s in ("differentiated", "never on the path", "refused")}
    head = (f"# ONNX operators on the gradient path\n\nWritten by `python -m onnx_tools ops` for onnx "
            f"{onnx.__version__} ({len(rows)} operators of the default domain): "
            f"{counts['differentiated']} differentiated, {counts['never on the path']} never on the path, "
            f"{counts['refused']} refused. Ops that are not between the first block and the class "
            "output (pre-processing before the first block, shape computations) are never differentiated "
            "and need no entry here. Variants a builder refuses (a constant that depends on the image, "
            "pads on the batch axis, ...) are named by the export's error.\n\n"
            "| operator | on the gradient path | note |\n|---|---|---|\n")
    return head + "".join(f"| {op} | {status} | {note} |\n" for op, status, note in rows)
