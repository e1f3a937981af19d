"""Detectors: the head outputs of a YOLO-style ONNX detector read as one canonical head.

Whatever convention the model's head follows, the export and the sampler see

    boxes       [N, A, 4]  x1, y1, x2, y2 in model-input pixels
    classes     [N, A, C]  class probabilities (a sigmoid applied where the model gives logits)
    objectness  [N, A]     the anchor's objectness, 1 where the head has none

and the score of an (anchor, class) pair is objectness * class probability. One convention is one entry
of :data:`CONVENTIONS`: how to recognise it from the graph, how to emit the canonical head from its
tensors, and how to emit the gradient of ``sum(target * score)`` at its scores tensor (the seed of the
backward pass). Everything after the canonical head is convention-free.

Conventions:
    yolov8  one output [N, 4 + C, A]: centre x, centre y, width, height in input pixels, then class scores
            (YOLOv8/YOLO11 as Ultralytics exports them; no objectness)
    yolov5  one output [N, A, 5 + C]: centre x, centre y, width, height, objectness, class scores
            (YOLOv5/YOLOv7, and YOLOX exported with its decoding)
    yolox   one output [N, A, 5 + C] before decoding (YOLOX with decode_in_inference=False): per anchor
            the grid offsets and log sizes of a cell of stride 8, 16 or 32, then objectness and classes
    nms     the inputs of a NonMaxSuppression node inside the graph: boxes [N, A, 4] (its
            center_point_box says how), scores [N, C, A]; NMS and what follows it are left out
    gfl     heads split by stride with distribution-style box regression (GFL/DFL: PicoDet, NanoDet,
            YOLOv8's raw head): per stride the class scores and 4 x B bins per anchor, one tensor of
            each ([N, C, h, w] or [N, h*w, C]) or one of both ([N, 4B + C, h, w], B = 16, Ultralytics'
            order); a side's distance is the bins' softmax expectation times the stride, from the cell
            centre ((column + 0.5) * stride)
    centernet  CenterNet-style maps at one stride: a class heatmap [N, C, h, w], sizes [N, 2, h, w] and
            centre offsets [N, 2, h, w] (in cells); an anchor per cell

A split head (gfl, centernet) is first joined into one tensor, ``sise/det/raw`` [N, A, K], by nodes the
export appends (Reshape, Transpose, Concat: the original outputs are untouched); from there on it is read
like a one-tensor head.

Whether class scores and objectness already passed a sigmoid is read from the graph (the producers behind
their channels); where they did not, the canonical head applies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .errors import ModelInputError
from .graph import GraphIndex

BOXES, CLASSES, OBJECTNESS = "sise/det/boxes", "sise/det/classes", "sise/det/objectness"
JOINED = "sise/det/raw"  # a split head's tensors joined into one [N, A, K]
SPLIT = ("gfl", "centernet")
DFL_BINS = 16  # bins per side of a head that writes bins and classes in one tensor (Ultralytics' reg_max)
GRID_STRIDES = (2, 4, 8, 16, 32, 64, 128)
HEAD_OUTPUTS = (BOXES, CLASSES, OBJECTNESS)
STRIDES = (8, 16, 32)  # the YOLO family's head strides (yolox decoding)
# ops that move or copy values without computing new ones: a sigmoid behind them is still applied
REARRANGING = {"Concat", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Slice",
               "Split", "Cast", "Gather", "Expand", "Tile"}
SIGMOIDS = {"Sigmoid", "HardSigmoid"}
TWO_STAGE_OPS = {"RoiAlign", "MaxRoiPool", "RoIAlign"}
# xyxy = cxcywh @ CENTRE_TO_CORNERS
CENTRE_TO_CORNERS = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]], np.float32)


@dataclass(frozen=True)
class DetectionHead:
    """Where a detector's head is and how to read it (written into the contract).

    Attributes:
        convention: a key of :data:`CONVENTIONS`.
        tensors: the model tensors the canonical head is computed from (the raw output, or NMS's inputs).
        scores_tensor: the one of ``tensors`` the scores depend on: the backward pass is seeded there.
        num_anchors, num_classes: A and C.
        logits: True when the class scores (and objectness) are logits: the canonical head applies sigmoid.
        box_encoding: "cxcywh", "xyxy" or "yxyx" (nms with center_point_box 0).
        strides: yolox, gfl, centernet: the strides of the anchors' cells, in anchor order.
        input_hw: the model input's height and width (grid decoding).
        bins: gfl: the bins per box side (B).
        parts: a split head's own tensors, joined into ``tensors[0]`` (JOINED) by :func:`join_head`.
        roles: what each of ``parts`` holds (classes, bins, bins+classes, heatmap, sizes, offsets).
    """

    convention: str
    tensors: tuple[str, ...]
    scores_tensor: str
    num_anchors: int
    num_classes: int
    logits: bool
    box_encoding: str = "cxcywh"
    strides: tuple[int, ...] = ()
    input_hw: tuple[int, int] = (0, 0)
    bins: int = 0
    parts: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @property
    def has_objectness(self) -> bool:
        return self.convention in ("yolov5", "yolox")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> DetectionHead:
        raw = dict(raw)
        for key in ("tensors", "strides", "input_hw", "parts", "roles"):
            raw[key] = tuple(raw.get(key, ()))
        return cls(**raw)


# ----- recognising the head ---------------------------------------------------------------------------
def refuse_two_stage(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type in TWO_STAGE_OPS:
            raise ModelInputError(
                f"node '{node.name or node.output[0]}' ({node.op_type}) crops regions of interest: a "
                "two-stage detector (Faster R-CNN style), whose boxes come from a second network per "
                "region; only one-stage detectors (YOLO, SSD-like heads) are explained")


def find_head(index: GraphIndex, convention: str = "auto", output: str | None = None) -> DetectionHead:
    """The detection head of the model (batch-1 analysis copy ``index``), in the named convention or the
    one its outputs match.

    Raises:
        ModelInputError: no convention matches (naming the outputs and the choices), several do, an
            end-to-end head with NMS that cannot be bypassed, or a convention that does not fit.
    """
    if convention != "auto" and convention not in CONVENTIONS:
        raise ModelInputError(f"--head {convention}: choose one of auto, {', '.join(CONVENTIONS)}")
    nms = [i for i, n in enumerate(index.nodes) if n.op_type == "NonMaxSuppression"]
    if nms and convention in ("auto", "nms"):
        return _nms_head(index, nms)
    if nms:
        node = index.nodes[nms[0]]
        raise ModelInputError(f"node '{node.name or node.output[0]}' (NonMaxSuppression) is inside the "
                              "graph: use --head nms (the tensors feeding it are read) or export the model "
                              "without NMS (Ultralytics: nms=False)")
    if convention in SPLIT:
        return _split_head(index, convention, required=True)
    if convention == "auto" and output is None and len(index.graph_outputs) > 1:
        for kind in SPLIT:  # several outputs that together make one head
            found_split = _split_head(index, kind, required=False)
            if found_split is not None:
                return found_split
    outputs = [output] if output is not None else list(index.graph_outputs)
    if output is not None and output not in index.graph_outputs:
        raise ModelInputError(f"--output '{output}' is not a graph output; outputs: {index.graph_outputs}")
    wanted = [convention] if convention != "auto" else ["yolov8", "yolov5"]
    found = []
    for name in outputs:
        _refuse_end_to_end(index, name)
        shape = index.info.get(name).shape if name in index.info else None
        for kind in wanted:
            head = CONVENTIONS[kind].match(index, name, shape)
            if head is not None:
                found.append(head)
    if len(found) == 1:
        return found[0]
    described = ", ".join(f"{n} {_shape_text(index, n)}" for n in index.graph_outputs)
    if not found:
        raise ModelInputError(
            f"no detection head the export knows among the outputs ({described}); name the convention with "
            f"--head {'|'.join(CONVENTIONS)} (yolov8: [N, 4+C, A]; yolov5: [N, A, 5+C]; yolox: [N, A, 5+C] "
            "before decoding; nms: the inputs of a NonMaxSuppression node; gfl: class scores and box bins "
            "per stride; centernet: heatmap, sizes and offsets) and the output with --output")
    raise ModelInputError(f"{len(found)} outputs could be the detection head "
                          f"({', '.join(h.tensors[0] + ' as ' + h.convention for h in found)}); name one "
                          "with --output NAME, and the convention with --head")


def _shape_text(index: GraphIndex, name: str) -> str:
    info = index.info.get(name)
    return str(list(info.shape)) if info is not None and info.shape is not None else "[?]"


KEEPS_TOP = {"TopK", "NonZero"}  # an end-to-end head keeps its best anchors with these (no NMS node)


def _refuse_end_to_end(index: GraphIndex, output: str) -> None:
    """An end-to-end head (YOLOv10, Ultralytics' nms=True without an NMS node): the output's detections
    were picked by a TopK or NonZero, so its scores no longer depend on all anchors."""
    todo, seen = [output], {output}
    while todo:
        producer = index.producer.get(todo.pop())
        if producer is None:
            continue
        node = index.nodes[producer]
        if node.op_type in KEEPS_TOP:
            raise ModelInputError(
                f"output '{output}' holds detections picked by node '{node.name or node.output[0]}' "
                f"({node.op_type}): an end-to-end head (YOLOv10, Ultralytics' nms=True), whose scores no "
                "longer depend on every anchor; export the model without it (Ultralytics: end2end=False, "
                "nms=False), or name the raw head with --output")
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                todo.append(name)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


@dataclass(frozen=True)
class Convention:
    """One head convention: ``match``, ``emit_canonical`` and ``emit_seed`` (see the module docstring)."""

    match: object
    emit_canonical: object
    emit_seed: object
    doc: str = field(default="")


def _match_yolov8(index: GraphIndex, name: str, shape) -> DetectionHead | None:
    if not _static(shape) or len(shape) != 3 or shape[0] != 1 or shape[1] < 5 or shape[2] < shape[1]:
        return None
    classes = shape[1] - 4
    return DetectionHead("yolov8", (name,), name, shape[2], classes,
                         logits=not sigmoid_applied(index, name, 1, (4, shape[1])))


def _match_yolov5(index: GraphIndex, name: str, shape, convention: str = "yolov5") -> DetectionHead | None:
    if not _static(shape) or len(shape) != 3 or shape[0] != 1 or shape[2] < 6 or shape[1] < shape[2]:
        return None
    return DetectionHead(convention, (name,), name, shape[1], shape[2] - 5,
                         logits=not sigmoid_applied(index, name, 2, (4, shape[2])))


def _match_yolox(index: GraphIndex, name: str, shape) -> DetectionHead | None:
    head = _match_yolov5(index, name, shape, "yolox")
    if head is None:
        return None
    image = index.info[index.graph_inputs[0]].shape
    hw = _input_hw(index)
    cells = [(hw[0] // s) * (hw[1] // s) for s in STRIDES]
    if sum(cells) != head.num_anchors:
        raise ModelInputError(
            f"output '{name}' has {head.num_anchors} anchors, but a YOLOX head on a {hw[0]}x{hw[1]} input "
            f"(image input {list(image)}) has {sum(cells)} (one per cell of strides {list(STRIDES)}); "
            "check --head and --input-shape")
    strides = tuple(s for s, n in zip(STRIDES, cells) for _ in range(n))
    return DetectionHead("yolox", (name,), name, head.num_anchors, head.num_classes, logits=head.logits,
                         strides=strides, input_hw=hw)


def _input_hw(index: GraphIndex) -> tuple[int, int]:
    from .model_io import detect_layout

    name = index.graph_inputs[0]
    shape = index.info[name].shape
    return (shape[2], shape[3]) if detect_layout(index, name) == "NCHW" else (shape[1], shape[2])


def _nms_head(index: GraphIndex, nms: list[int]) -> DetectionHead:
    node = index.nodes[nms[0]]
    name = node.name or node.output[0]
    if len(nms) > 1:
        raise ModelInputError(f"{len(nms)} NonMaxSuppression nodes in the graph; the export reads one "
                              f"('{name}' is the first): export the model without NMS")
    boxes, scores = node.input[0], node.input[1]
    b_shape = index.info[boxes].shape if boxes in index.info else None
    s_shape = index.info[scores].shape if scores in index.info else None
    if not (_static(b_shape) and _static(s_shape) and len(b_shape) == 3 and len(s_shape) == 3
            and b_shape[2] == 4 and s_shape[2] == b_shape[1] and b_shape[0] == s_shape[0] == 1):
        raise ModelInputError(
            f"node '{name}' (NonMaxSuppression) reads boxes {list(b_shape or [])} and scores "
            f"{list(s_shape or [])}: not the [N, A, 4] and [N, C, A] with static sizes it should; export the "
            "model without NMS")
    centre = any(a.name == "center_point_box" and a.i == 1 for a in node.attribute)
    return DetectionHead("nms", (boxes, scores), scores, b_shape[1], s_shape[1],
                         logits=not sigmoid_applied(index, scores, 1, (0, s_shape[1])),
                         box_encoding="cxcywh" if centre else "yxyx")


# ----- split heads (gfl, centernet): recognised from the outputs, joined into one tensor ---------------
CLASS_WORDS = ("cls", "class", "score", "conf", "logit", "prob", "hm", "heat")
BOX_WORDS = ("reg", "box", "bbox", "dist", "loc", "dfl")


def _grid_outputs(index: GraphIndex) -> list[tuple[str, str, int, int]]:
    """(name, layout "nchw" | "flat", channels, stride) of each output laid out on a grid of the input:
    [1, K, h, w] with h, w the input's divided by a stride, or [1, h*w, K] for such a grid."""
    hw = _input_hw(index)
    found = []
    for name in index.graph_outputs:
        shape = index.info[name].shape if name in index.info else None
        if not _static(shape) or shape[0] != 1:
            continue
        if len(shape) == 4:
            stride = hw[0] // shape[2] if shape[2] else 0
            if stride in GRID_STRIDES and stride * shape[2] == hw[0] and stride * shape[3] == hw[1]:
                found.append((name, "nchw", shape[1], stride))
        elif len(shape) == 3:
            strides = [s for s in GRID_STRIDES if hw[0] % s == 0 and hw[1] % s == 0
                       and (hw[0] // s) * (hw[1] // s) == shape[1]]
            if strides:
                found.append((name, "flat", shape[2], strides[0]))
    return found


def _says(name: str, words: tuple[str, ...]) -> bool:
    low = name.lower()
    return any(w in low for w in words)


def _class_axis(layout: str) -> int:
    return 1 if layout == "nchw" else 2


def _split_head(index: GraphIndex, convention: str, required: bool) -> DetectionHead | None:
    """A gfl or centernet head from the model's outputs; None (or, when ``required``, a refusal saying
    what was found) when they do not make one."""
    grid = _grid_outputs(index)
    head, problem = (_gfl_head if convention == "gfl" else _centernet_head)(index, grid)
    if head is None and required:
        described = ", ".join(f"{n} {_shape_text(index, n)}" for n in index.graph_outputs)
        raise ModelInputError(f"--head {convention}: the outputs ({described}) do not make one: {problem}")
    return head


def _gfl_head(index: GraphIndex, grid: list) -> tuple[DetectionHead | None, str]:
    groups: dict[int, list] = {}
    for item in grid:
        groups.setdefault(item[3], []).append(item)
    if len(groups) < 2:
        return None, "a GFL head has outputs at two strides or more"
    parts, roles, classes, bins, logits = [], [], set(), set(), set()
    for stride in sorted(groups):
        group = groups[stride]
        if len(group) == 1:  # bins and classes in one tensor (YOLOv8's raw head)
            name, layout, channels, _ = group[0]
            if channels <= 4 * DFL_BINS:
                return None, f"'{name}' has {channels} channels: not {4 * DFL_BINS} box bins and classes"
            classes.add(channels - 4 * DFL_BINS)
            bins.add(DFL_BINS)
            logits.add(not sigmoid_applied(index, name, _class_axis(layout), (4 * DFL_BINS, channels)))
            parts.append(name)
            roles.append("bins+classes")
            continue
        if len(group) != 2:
            return None, f"stride {stride} has {len(group)} outputs; a GFL head has one or two per stride"
        box = [g for g in group if _says(g[0], BOX_WORDS) and not _says(g[0], CLASS_WORDS)]
        if len(box) != 1:
            box = [g for g in group if not sigmoid_applied(index, g[0], _class_axis(g[1]), (0, g[2]))
                   and g[2] % 4 == 0 and g[2] >= 16]
        if len(box) != 1:
            names = [g[0] for g in group]
            return None, (f"at stride {stride} it is not clear which of {names} holds the box bins (name "
                          "them with reg/box/bbox and cls/score)")
        box = box[0]
        cls = next(g for g in group if g is not box)
        if box[2] % 4 or box[2] < 8:
            return None, f"'{box[0]}' has {box[2]} channels: not 4 sides x bins"
        classes.add(cls[2])
        bins.add(box[2] // 4)
        logits.add(not sigmoid_applied(index, cls[0], _class_axis(cls[1]), (0, cls[2])))
        parts += [box[0], cls[0]]
        roles += ["bins", "classes"]
    if len(classes) != 1 or len(bins) != 1 or len(logits) != 1:
        return None, "the strides disagree on the number of classes or bins, or on where the sigmoid is"
    hw = _input_hw(index)
    strides = tuple(s for s in sorted(groups) for _ in range((hw[0] // s) * (hw[1] // s)))
    return DetectionHead("gfl", (JOINED,), JOINED, len(strides), classes.pop(), logits=logits.pop(),
                         box_encoding="ltrb", strides=strides, input_hw=hw, bins=bins.pop(),
                         parts=tuple(parts), roles=tuple(roles)), ""


def _centernet_head(index: GraphIndex, grid: list) -> tuple[DetectionHead | None, str]:
    nchw = [g for g in grid if g[1] == "nchw"]
    if len(nchw) != 3 or len({g[3] for g in nchw}) != 1:
        return None, "a CenterNet head has three [N, K, h, w] outputs at one stride (heatmap, sizes, offsets)"
    pairs = [g for g in nchw if g[2] == 2]
    heat = [g for g in nchw if g not in pairs]
    if len(pairs) == 3:  # two classes: the heatmap is the one named so
        heat = [g for g in nchw if _says(g[0], ("hm", "heat", "cls", "center"))]
        pairs = [g for g in nchw if g not in heat]
    if len(heat) != 1 or len(pairs) != 2:
        return None, "one output must be the class heatmap and two have 2 channels (sizes, offsets)"
    size = [g for g in pairs if _says(g[0], ("wh", "size"))]
    offset = [g for g in pairs if _says(g[0], ("off", "reg"))]
    if len(size) != 1 or len(offset) != 1 or size[0] is offset[0]:
        size, offset = pairs[:1], pairs[1:]  # CenterNet's order: heatmap, wh, reg
    (name, _, channels, stride) = heat[0]
    hw = _input_hw(index)
    cells = (hw[0] // stride) * (hw[1] // stride)
    return DetectionHead("centernet", (JOINED,), JOINED, cells, channels,
                         logits=not sigmoid_applied(index, name, 1, (0, channels)),
                         strides=(stride,) * cells, input_hw=hw, parts=(offset[0][0], size[0][0], name),
                         roles=("offsets", "sizes", "heatmap")), ""


def join_head(model: onnx.ModelProto, head: DetectionHead, opset: int) -> onnx.ModelProto:
    """Append to ``model`` the nodes joining a split head's tensors into JOINED [N, A, K] (gfl: per anchor
    the 4B bins, then the classes; centernet: offsets, sizes, classes), stride by stride."""
    from .gradients import Emitter
    from .gradients.builder import append_emitted
    from .graph import taken_names

    index = GraphIndex(model)
    emit = Emitter(opset, "sise/det/join", taken_names(model))

    def rows(name: str) -> str:  # [N, h*w, K]
        shape = index.info[name].shape if name in index.info else None
        rank = len(shape) if shape is not None else len(_declared_shape(model, name))
        if rank == 3:
            return name
        channels = (shape or _declared_shape(model, name))[1]
        flat = emit.op("Reshape", [name, emit.ints([0, channels, -1])])
        return emit.op("Transpose", [flat], perm=[0, 2, 1])

    if head.convention == "gfl":
        per_stride, i = [], 0
        while i < len(head.parts):
            if head.roles[i] == "bins+classes":
                per_stride.append(rows(head.parts[i]))
                i += 1
            else:
                per_stride.append(emit.op("Concat", [rows(head.parts[i]), rows(head.parts[i + 1])], axis=2))
                i += 2
        emit.op("Concat", per_stride, axis=1, outputs=[JOINED])
    else:
        emit.op("Concat", [rows(p) for p in head.parts], axis=2, outputs=[JOINED])
    append_emitted(model, emit)
    return model


def _declared_shape(model: onnx.ModelProto, name: str) -> list:
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name:
            return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
    raise ModelInputError(f"the shape of '{name}' is not known: export the model with static output shapes")


def sigmoid_applied(index: GraphIndex, tensor: str, axis: int, channels: tuple[int, int]) -> bool:
    """Whether the values of ``tensor`` in ``channels`` [lo, hi) of ``axis`` come out of a sigmoid, read
    from the producers behind them through ops that only move values (Concat, Reshape, Slice, ...)."""
    return _sigmoid_behind(index, tensor, axis, channels, depth=0)


def _sigmoid_behind(index: GraphIndex, tensor: str, axis: int, channels: tuple[int, int], depth: int) -> bool:
    producer = index.producer.get(tensor)
    if producer is None or depth > 64:
        return False
    node = index.nodes[producer]
    if node.op_type in SIGMOIDS:
        return True
    if node.op_type not in REARRANGING:
        return False
    rank = index.rank(tensor)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Concat":
        cat = attrs["axis"] % rank
        if cat != axis:
            return all(_sigmoid_behind(index, i, axis, channels, depth + 1) for i in node.input)
        lo, hi, start, found = channels[0], channels[1], 0, []
        for i in node.input:
            size = index.info[i].shape[axis] if index.info.get(i) and index.info[i].shape else None
            if size is None:
                return False
            a, b = max(lo, start), min(hi, start + size)
            if a < b:
                found.append(_sigmoid_behind(index, i, axis, (a - start, b - start), depth + 1))
            start += size
        return bool(found) and all(found)
    if node.op_type == "Transpose":
        perm = list(attrs.get("perm", reversed(range(rank))))
        return _sigmoid_behind(index, node.input[0], perm[axis], channels, depth + 1)
    if node.op_type in ("Slice", "Split"):
        return _sigmoid_behind(index, node.input[0], axis, _shifted(index, node, tensor, axis, channels),
                               depth + 1)
    source = node.input[0]
    source_rank = index.rank(source)
    if source_rank is None:
        return False
    if axis == rank - 1:  # the last axis stays the last through Reshape, Flatten, (Un)Squeeze of others
        return _sigmoid_behind(index, source, source_rank - 1, channels, depth + 1)
    return _sigmoid_behind(index, source, axis if source_rank == rank else source_rank - 1, channels,
                           depth + 1)


def _shifted(index: GraphIndex, node, tensor: str, axis: int, channels: tuple[int, int]) -> tuple[int, int]:
    """The channel range in a Slice's or Split's input that ``channels`` of its output ``tensor`` read."""
    start = 0
    if node.op_type == "Split":
        position = list(node.output).index(tensor)
        for other in node.output[:position]:
            start += index.info[other].shape[axis] if index.info.get(other) and index.info[other].shape else 0
        return channels[0] + start, channels[1] + start
    starts = index.const_value(node.input[1]) if len(node.input) > 1 else None
    axes = index.const_value(node.input[3]) if len(node.input) > 3 else None
    if starts is not None:
        axes = list(axes) if axes is not None else list(range(len(starts)))
        for s, a in zip(starts, axes):
            if a % index.rank(node.input[0]) == axis:
                start = int(s) if s >= 0 else int(s) + index.info[node.input[0]].shape[axis]
    return channels[0] + start, channels[1] + start


# ----- the canonical head, as ONNX nodes --------------------------------------------------------------
def _corners(emit, boxes: str, encoding: str) -> str:
    """[N, A, 4] boxes in ``encoding`` -> x1, y1, x2, y2."""
    if encoding == "xyxy":
        return boxes
    if encoding == "yxyx":
        return emit.op("MatMul", [boxes, emit.const(np.eye(4, dtype=np.float32)[[1, 0, 3, 2]].T.copy())])
    return emit.op("MatMul", [boxes, emit.const(CENTRE_TO_CORNERS, hint="centre_to_corners")])


def _ones_like_anchors(emit, classes: str) -> str:
    """[N, A] of ones, shaped after ``classes`` [N, A, C]."""
    zero = emit.const(np.zeros((), np.float32))
    one = emit.const(np.ones((), np.float32))
    first = emit.slice(classes, [0], [1], [2])
    return emit.op("Add", [emit.op("Mul", [emit.reduce("ReduceSum", first, [2], keepdims=False), zero]), one])


def _probabilities(emit, values: str, head: DetectionHead) -> str:
    return emit.op("Sigmoid", [values]) if head.logits else values


def _canonical_yolov8(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    rows = emit.op("Transpose", [tensors[head.tensors[0]]], perm=[0, 2, 1])  # [N, A, 4 + C]
    boxes = _corners(emit, emit.slice(rows, [0], [4], [2]), "cxcywh")
    classes = _probabilities(emit, emit.slice(rows, [4], [4 + head.num_classes], [2]), head)
    return boxes, classes, _ones_like_anchors(emit, classes)


def _canonical_yolov5(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    raw = tensors[head.tensors[0]]  # [N, A, 5 + C]
    boxes = _corners(emit, emit.slice(raw, [0], [4], [2]), "cxcywh")
    objectness = emit.reduce("ReduceSum", _probabilities(emit, emit.slice(raw, [4], [5], [2]), head), [2],
                             keepdims=False)
    classes = _probabilities(emit, emit.slice(raw, [5], [5 + head.num_classes], [2]), head)
    return boxes, classes, objectness


def yolox_grid(head: DetectionHead) -> np.ndarray:
    """[A, 3]: the cell column, row and stride of each anchor, in the head's order."""
    out = []
    for stride in STRIDES:
        rows, cols = head.input_hw[0] // stride, head.input_hw[1] // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        out.append(np.stack([xs.ravel(), ys.ravel(), np.full(rows * cols, stride)], axis=1))
    return np.concatenate(out).astype(np.float32)


def _canonical_yolox(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    raw = tensors[head.tensors[0]]  # [N, A, 5 + C], boxes as cell offsets and log sizes
    grid = yolox_grid(head)
    offsets = emit.slice(raw, [0], [2], [2])
    sizes = emit.slice(raw, [2], [4], [2])
    stride = emit.const(grid[:, 2:3].copy(), hint="strides")  # [A, 1]
    centre = emit.op("Mul", [emit.op("Add", [offsets, emit.const(grid[:, :2].copy(), hint="cells")]), stride])
    size = emit.op("Mul", [emit.op("Exp", [sizes]), stride])
    boxes = _corners(emit, emit.op("Concat", [centre, size], axis=2), "cxcywh")
    objectness = emit.reduce("ReduceSum", _probabilities(emit, emit.slice(raw, [4], [5], [2]), head), [2],
                             keepdims=False)
    classes = _probabilities(emit, emit.slice(raw, [5], [5 + head.num_classes], [2]), head)
    return boxes, classes, objectness


def _canonical_nms(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    boxes = _corners(emit, tensors[head.tensors[0]], head.box_encoding)
    classes = _probabilities(emit, emit.op("Transpose", [tensors[head.tensors[1]]], perm=[0, 2, 1]), head)
    return boxes, classes, _ones_like_anchors(emit, classes)


def anchor_grid(head: DetectionHead, offset: float) -> np.ndarray:
    """[A, 3]: (column + offset) * stride, (row + offset) * stride and the stride of each anchor's cell, in
    the head's order (runs of equal strides, row by row)."""
    out, position = [], 0
    while position < len(head.strides):
        stride = head.strides[position]
        rows, cols = head.input_hw[0] // stride, head.input_hw[1] // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        out.append(np.stack([(xs.ravel() + offset) * stride, (ys.ravel() + offset) * stride,
                             np.full(rows * cols, stride)], axis=1))
        position += rows * cols
    return np.concatenate(out).astype(np.float32)


def _canonical_gfl(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    raw = tensors[head.tensors[0]]  # [N, A, 4B + C]
    b, a = head.bins, head.num_anchors
    bins = emit.op("Reshape", [emit.slice(raw, [0], [4 * b], [2]), emit.ints([0, a, 4, b])])
    weights = emit.op("Softmax", [bins], axis=3)
    expected = emit.op("MatMul", [weights, emit.const(np.arange(b, dtype=np.float32).reshape(b, 1),
                                                      hint="bin_values")])  # [N, A, 4, 1]
    grid = anchor_grid(head, 0.5)
    sides = emit.op("Mul", [emit.op("Reshape", [expected, emit.ints([0, a, 4])]),
                            emit.const(grid[:, 2:3].copy(), hint="strides")])  # l, t, r, b in pixels
    centre = emit.const(grid[:, :2].copy(), hint="centres")
    boxes = emit.op("Concat", [emit.op("Sub", [centre, emit.slice(sides, [0], [2], [2])]),
                               emit.op("Add", [centre, emit.slice(sides, [2], [4], [2])])], axis=2)
    classes = _probabilities(emit, emit.slice(raw, [4 * b], [4 * b + head.num_classes], [2]), head)
    return boxes, classes, _ones_like_anchors(emit, classes)


def _canonical_centernet(emit, head: DetectionHead, tensors: dict) -> tuple[str, str, str]:
    raw = tensors[head.tensors[0]]  # [N, A, 4 + C]: offsets, sizes (cells), classes
    grid = anchor_grid(head, 0.0)
    stride = emit.const(grid[:, 2:3].copy(), hint="strides")
    centre = emit.op("Add", [emit.const(grid[:, :2].copy(), hint="cells"),
                             emit.op("Mul", [emit.slice(raw, [0], [2], [2]), stride])])
    size = emit.op("Mul", [emit.slice(raw, [2], [4], [2]), stride])
    boxes = _corners(emit, emit.op("Concat", [centre, size], axis=2), "cxcywh")
    classes = _probabilities(emit, emit.slice(raw, [4], [4 + head.num_classes], [2]), head)
    return boxes, classes, _ones_like_anchors(emit, classes)


def emit_canonical_head(emit, head: DetectionHead, tensors: dict | None = None) -> tuple[str, str, str]:
    """Emit boxes [N, A, 4], classes [N, A, C], objectness [N, A] from the head's tensors (``tensors``:
    their names in the graph being built, when they differ from the model's)."""
    tensors = {t: (tensors or {}).get(t, t) for t in head.tensors}
    return CONVENTIONS[head.convention].emit_canonical(emit, head, tensors)


# ----- the gradient seed: d sum(target * objectness * classes) / d scores tensor ----------------------
def _sigmoid_slope(emit, p: str) -> str:
    one = emit.const(np.ones((), np.float32))
    return emit.op("Mul", [p, emit.op("Sub", [one, p])])


def _seed_yolov8(emit, head: DetectionHead, target: str) -> str:
    raw = head.scores_tensor  # [N, 4 + C, A]
    by_class = emit.op("Transpose", [target], perm=[0, 2, 1])  # [N, C, A]
    if head.logits:
        by_class = emit.op("Mul", [by_class, _sigmoid_slope(emit, emit.op("Sigmoid", [
            emit.slice(raw, [4], [4 + head.num_classes], [1])]))])
    zeros = emit.op("Mul", [emit.slice(raw, [0], [4], [1]), emit.const(np.zeros((), np.float32))])
    return emit.op("Concat", [zeros, by_class], axis=1)


def _seed_objectness(emit, head: DetectionHead, target: str, first: int) -> str:
    """yolov5 / yolox: raw [N, A, 5 + C] with objectness at 4: d score / d raw for score = obj * cls."""
    raw = head.scores_tensor
    objectness = _probabilities(emit, emit.slice(raw, [4], [5], [2]), head)  # [N, A, 1]
    classes = _probabilities(emit, emit.slice(raw, [5], [5 + head.num_classes], [2]), head)  # [N, A, C]
    d_obj = emit.reduce("ReduceSum", emit.op("Mul", [target, classes]), [2], keepdims=True)
    d_cls = emit.op("Mul", [target, objectness])
    if head.logits:
        d_obj = emit.op("Mul", [d_obj, _sigmoid_slope(emit, objectness)])
        d_cls = emit.op("Mul", [d_cls, _sigmoid_slope(emit, classes)])
    zeros = emit.op("Mul", [emit.slice(raw, [0], [first], [2]), emit.const(np.zeros((), np.float32))])
    return emit.op("Concat", [zeros, d_obj, d_cls], axis=2)


def _seed_nms(emit, head: DetectionHead, target: str) -> str:
    by_class = emit.op("Transpose", [target], perm=[0, 2, 1])  # [N, C, A], as NMS's scores
    if head.logits:
        by_class = emit.op("Mul", [by_class, _sigmoid_slope(emit, emit.op("Sigmoid", [head.scores_tensor]))])
    return by_class


def _seed_classes_after(emit, head: DetectionHead, target: str, first: int) -> str:
    """gfl / centernet: raw [N, A, first + C], no objectness: d score / d raw for score = classes."""
    raw = head.scores_tensor
    by_class = target  # [N, A, C]
    if head.logits:
        by_class = emit.op("Mul", [by_class, _sigmoid_slope(emit, emit.op("Sigmoid", [
            emit.slice(raw, [first], [first + head.num_classes], [2])]))])
    zeros = emit.op("Mul", [emit.slice(raw, [0], [first], [2]), emit.const(np.zeros((), np.float32))])
    return emit.op("Concat", [zeros, by_class], axis=2)


def emit_seed(emit, head: DetectionHead, target: str) -> str:
    """d(sum over n, a, c of target * objectness * classes) / d(head.scores_tensor), ``target`` [N, A, C]."""
    return CONVENTIONS[head.convention].emit_seed(emit, head, target)


CONVENTIONS: dict[str, Convention] = {
    "yolov8": Convention(_match_yolov8, _canonical_yolov8, _seed_yolov8),
    "yolov5": Convention(_match_yolov5, _canonical_yolov5, lambda e, h, t: _seed_objectness(e, h, t, 4)),
    "yolox": Convention(_match_yolox, _canonical_yolox, lambda e, h, t: _seed_objectness(e, h, t, 4)),
    "nms": Convention(lambda index, name, shape: None, _canonical_nms, _seed_nms),
    "gfl": Convention(lambda index, name, shape: None, _canonical_gfl,
                      lambda e, h, t: _seed_classes_after(e, h, t, 4 * h.bins)),
    "centernet": Convention(lambda index, name, shape: None, _canonical_centernet,
                            lambda e, h, t: _seed_classes_after(e, h, t, 4)),
}
