"""The model's image input and class output: fixing the input shape, layout, the analysis copy."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import onnx

from .errors import ModelInputError
from .graph import FLOAT_TYPES, GraphIndex, dims_of, find_image_input, fold_constants


@dataclass(frozen=True)
class ModelIO:
    """What the export step learnt about the model's interface.

    Attributes:
        input_name: the image input.
        layout: "NCHW" or "NHWC" (a Keras/tf2onnx export whose first op is a Transpose).
        input_dims: the image input's dims as the exported model declares them (batch may be a string).
        output_name: the class-score output, [N, K] (trailing 1-dims allowed).
        num_classes: K.
    """

    input_name: str
    layout: str
    input_dims: tuple
    output_name: str
    num_classes: int


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a tuple of four positive ints.

    Raises:
        ModelInputError: naming the text (the caller names the option it came from).
    """
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError as e:
        raise ModelInputError(f"'{text}' is not a comma-separated list of integers, e.g. 1,3,224,224") from e
    if len(dims) != 4 or any(d <= 0 or d > 2**31 - 1 for d in dims):
        raise ModelInputError(f"'{text}' must be four positive integers (below 2^31) in the input's own "
                              "layout, e.g. 1,3,224,224")
    return dims


def fix_input_shape(model: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> onnx.ModelProto:
    """Return a copy of ``model`` whose image input has static non-batch dims.

    The batch dim stays as the model declares it. Raises when a non-batch dim is dynamic and no
    ``input_shape`` is given, or when ``input_shape`` contradicts a static dim.
    """
    model = copy.deepcopy(model)
    vi = find_image_input(model)
    dims = dims_of(vi)
    if isinstance(dims[0], int) and dims[0] > 1:
        raise ModelInputError(
            f"input '{vi.name}' has a fixed batch of {dims[0]} ({dims}); re-export the model with a batch "
            f"of 1 or a dynamic one (torch: torch.onnx.export(..., dynamic_axes={{'{vi.name}': {{0: 'N'}}, "
            "<output>: {0: 'N'}}))")
    if input_shape is None:
        dynamic = [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]
        if dynamic:
            raise ModelInputError(
                f"input '{vi.name}' has dynamic dims {dims}; pass the image size with --input-shape, "
                f"e.g. --input-shape 1,3,224,224 (in the input's own layout)")
        return model
    for i, (have, want) in enumerate(zip(dims, input_shape)):
        if i > 0 and isinstance(have, int) and have != want:
            raise ModelInputError(f"--input-shape {list(input_shape)} contradicts input '{vi.name}' "
                                  f"dims {dims} at axis {i}")
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if i > 0:
            d.Clear()
            d.dim_value = input_shape[i]
    return model


def analysis_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A shape-inferred, constant-folded copy with batch 1, used only to read static shapes and values.

    Its nodes stay at the same positions as in ``model`` (folded ones become Constant nodes); the
    export checks that with :func:`~onnx_tools.graph.check_aligned` where it relies on it.
    """
    model = copy.deepcopy(model)
    vi = find_image_input(model)
    first = vi.type.tensor_type.shape.dim[0]
    if not first.HasField("dim_value"):
        first.Clear()
        first.dim_value = 1
    return fold_constants(model)


LAYOUTS = ("NCHW", "NHWC")
# Ops a converter puts between the image and the first layout-aware op (dtype casts, scaling, mean
# subtraction, padding, clipping): they keep the layout, which is decided by what reads their result.
PASS_THROUGH = {"Cast", "Identity", "Mul", "Add", "Sub", "Div", "Pad", "Clip"}


def detect_layout(index: GraphIndex, input_name: str) -> str:
    """NHWC when every path from the input, through pass-through preprocessing (:data:`PASS_THROUGH`),
    reaches a Transpose with perm [0, 3, 1, 2]; otherwise NCHW."""
    readers, frontier, seen = [], [input_name], {input_name}
    while frontier:
        for i in index.consumers.get(frontier.pop(), []):
            node = index.nodes[i]
            if node.op_type in PASS_THROUGH:
                fresh = [o for o in node.output if o not in seen]
                seen.update(fresh)
                frontier.extend(fresh)
            else:
                readers.append(node)
    if readers and all(n.op_type == "Transpose" and _perm(n) == [0, 3, 1, 2] for n in readers):
        return "NHWC"
    return "NCHW"


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def find_class_output(index: GraphIndex, requested: str | None) -> tuple[str, int]:
    """The class-score output and its class count K.

    A candidate is a float graph output shaped [1, K] (trailing 1-dims allowed) in the batch-1 copy.
    """
    def classes_of(name: str) -> int | None:
        info = index.info.get(name)
        if info is None or info.elem_type not in FLOAT_TYPES or info.shape is None or len(info.shape) < 2:
            return None
        if info.shape[0] != 1 or info.shape[1] < 1 or any(d != 1 for d in info.shape[2:]):
            return None
        return info.shape[1]

    if requested is not None:
        if requested not in index.graph_outputs:
            raise ModelInputError(f"--output '{requested}' is not a graph output; "
                                  f"outputs: {index.graph_outputs}")
        k = classes_of(requested)
        if k is None:
            info = index.info.get(requested)
            shape = list(info.shape) if info is not None and info.shape is not None else "unknown"
            raise ModelInputError(f"output '{requested}' is not shaped [N, num_classes] (shape {shape} with "
                                  "a batch of 1)")
        return requested, k
    found = [(name, classes_of(name)) for name in index.graph_outputs]
    found = [(n, k) for n, k in found if k is not None]
    if len(found) != 1:
        what = "no output" if not found else f"{len(found)} outputs ({', '.join(n for n, _ in found)})"
        raise ModelInputError(f"{what} shaped [N, num_classes] among {index.graph_outputs}; "
                              "name the class-score output with --output NAME")
    return found[0]
