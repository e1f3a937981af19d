"""The sampler graph: SISE's per-mask work for a chunk of selected feature maps, as one ONNX graph
built from an exported model, so that only channel indices go in and one map per layer comes out.

One run scores the maps of N images for T targets at once: a target is what one explanation explains
(a class of an image; for a detector, one detection), and a masked image is shared by every target that
selected its map (the detections of one image share their masked images).

Inputs (B blocks of the contract, model input H x W):
    sampler/image         the N pre-processed images [N, ...] in the model's layout
    sampler/act/<b>       block b's activations [N, C_b, h_b, w_b] (stay on the device between runs)
    sampler/idx/<b>       int64 [K_b]: the selected maps of block b in this chunk, as rows n * C_b + c of the
                          activations flattened to [N * C_b, h_b, w_b] (image n, channel c; may be empty)
    sampler/owner         int64 [K]: the image n each selected map masks, in the sampler's order (below)
    sampler/target        float32 [T, num_classes]: a classifier's class weights per target; a detector's
                          class of each target detection (one-hot over its C classes)
    sampler/target_boxes  float32 [T, 4] (detectors only): each target detection's x1, y1, x2, y2 in
                          model-input pixels
    sampler/keep          float32 [K, T]: 1 where target t uses map k (it selected it), 0 elsewhere and
                          for padding (a caller keeping every run at the same batch size repeats a map
                          with keep 0; it adds nothing)

Per selected map k (K = sum K_b, block order, then the order of idx/<b>): m_k = min-max(bilinear-upsample(
act row idx_k)) (half-pixel centres, as PyTorch's align_corners=False); x_k = image[owner_k] * m_k, and
s_kt its score for target t: a classifier's sum_c target[t, c] * psi_c(model(x_k)); a detector's D-RISE
similarity (Petsiuk et al., CVPR 2021) between target t and the detections of x_k,
max_a IoU(box_t, box_a) * cos(class_t, classes_a) * objectness_a over the canonical head's anchors a.

Outputs:
    sampler/layer_maps  [T, B, H, W]: per target t and layer b, the sum over the chunk's maps of layer b of
                        keep_kt * s_kt * m_k / sum(m_k)
    sampler/scores      [K, T]: s_kt, in the sampler's order

The caller drops constant maps (``sise/range/<b>`` <= eps) before sampling; they have no min-max mask.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper

from .contract import Contract, read_contract
from .detection import emit_canonical_head
from .errors import ModelInputError
from .gradients import Emitter
from .graph import default_opset, taken_names
from .interpolation import upsample_matrix
from .scores import emit_score

IMAGE, TARGET, LAYER_MAPS, SCORES = "sampler/image", "sampler/target", "sampler/layer_maps", "sampler/scores"
KEEP, OWNER, TARGET_BOXES = "sampler/keep", "sampler/owner", "sampler/target_boxes"
MASKS = "scorer/masks"
OPTIONAL_OUTPUT_OPS = {"MaxPool", "Dropout"}


def act_input(b: int) -> str:
    return f"sampler/act/{b}"


def idx_input(b: int) -> str:
    return f"sampler/idx/{b}"


def image_size(contract: Contract) -> tuple[int, int]:
    dims = contract.input_shape
    return (dims[2], dims[3]) if contract.input_layout == "NCHW" else (dims[1], dims[2])


def _head_tensors(contract: Contract) -> list[str]:
    """The model tensors the masked forward pass must produce: the class output, or a detector's head."""
    return list(contract.head.tensors) if contract.detector else [contract.output_name]


def _forward_nodes(model: onnx.ModelProto, outputs: list[str]) -> list[onnx.NodeProto]:
    """Copies of the nodes ``outputs`` need (the original forward graph), optional outputs nobody reads
    (MaxPool Indices added for the backward pass) removed."""
    needed, keep = set(outputs), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    read = {i for n in keep for i in n.input} | set(outputs)
    out = []
    for node in keep:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        if node.op_type in OPTIONAL_OUTPUT_OPS:
            for slot in range(1, len(node.output)):
                if node.output[slot] not in read:
                    node.output[slot] = ""
            while node.output and node.output[-1] == "":
                node.output.pop()
        out.append(node)
    return out


def _half_precision(nodes: list, inits: list, exported: onnx.ModelProto,
                    contract: Contract) -> tuple[list, list]:
    """The forward nodes computing in float16 between float32 input and outputs (casts at both ends),
    via onnxconverter-common, which knows which inputs must stay float32 (Resize scales, ...)."""
    quantizers = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if quantizers:
        first = quantizers[0]
        raise ModelInputError(f"the model is quantized (node '{first.name or first.output[0]}', "
                              f"{first.op_type}): it runs in its own precision, not in float16; "
                              "set runtime.fp16: false")
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise ModelInputError("fp16 needs the onnxconverter-common package "
                              "(pip install onnxconverter-common; it comes with the gpu extra)") from e
    image = helper.make_tensor_value_info(contract.input_name, onnx.TensorProto.FLOAT,
                                          ["K"] + list(contract.input_shape[1:]))
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
               for name in _head_tensors(contract)]
    part = helper.make_model(helper.make_graph(nodes, "forward", [image], outputs, inits),
                             opset_imports=list(exported.opset_import))
    part.ir_version = max(exported.ir_version, 7)
    with warnings.catch_warnings():  # one "will be truncated" warning per tiny weight: not news to a user
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(part, keep_io_types=True, disable_shape_infer=True)
    return list(half.graph.node), list(half.graph.initializer)


def build_forward(exported: onnx.ModelProto) -> onnx.ModelProto:
    """The model's forward part alone, as its own graph: the image input (batch ``K``, named as the model's)
    to the class output, or a detector's canonical head tensors; the nodes SISE runs on every masked image.
    A copy to transform (quantize, ...) and hand back to :func:`build_sampler` as ``forward``.

    Raises:
        ModelInputError: the model carries no SISE contract.
    """
    contract, _ = _start(exported, "forward")
    nodes = _forward_nodes(exported, _head_tensors(contract))
    used = {i for n in nodes for i in n.input}
    image = helper.make_tensor_value_info(contract.input_name, onnx.TensorProto.FLOAT,
                                          ["K"] + list(contract.input_shape[1:]))
    outputs = [_output_info(exported, name) for name in _head_tensors(contract)]
    inits = [t for t in exported.graph.initializer if t.name in used]
    model = helper.make_model(helper.make_graph(nodes, "forward", [image], outputs, inits),
                              opset_imports=list(exported.opset_import))
    model.ir_version = max(exported.ir_version, 7)
    return model


def _output_info(exported: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """float32 ``name`` with the rank and non-batch dims the exported graph gives it (batch ``K``), or of
    unknown dims when the graph does not say."""
    known = {v.name: v for v in [*exported.graph.output, *exported.graph.value_info]}
    if name in known and known[name].type.tensor_type.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else f"{name}_{i}"
                for i, d in enumerate(known[name].type.tensor_type.shape.dim)]
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["K", *dims[1:]] if dims else [])
    info = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    info.type.tensor_type.shape.Clear()  # rank unknown
    return info


def _given_forward(forward: onnx.ModelProto, contract: Contract) -> tuple[list, list]:
    """The nodes and initializers of a forward graph from :func:`build_forward` (transformed), checked to
    take the model's image input and give its head tensors."""
    weights = {t.name for t in forward.graph.initializer}
    inputs = [i.name for i in forward.graph.input if i.name not in weights]
    outputs = {o.name for o in forward.graph.output}
    missing = [name for name in _head_tensors(contract) if name not in outputs]
    if inputs != [contract.input_name] or missing:
        raise ModelInputError(f"the forward graph given to the sampler takes {inputs} and lacks outputs "
                              f"{missing}; it must take only '{contract.input_name}' and give "
                              f"{_head_tensors(contract)} (build it with build_forward)")
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in forward.graph.node]
    return nodes, list(forward.graph.initializer)


def _masked_forward(emit: Emitter, exported: onnx.ModelProto, contract: Contract, masks: str,
                    fp16: bool = False, owner: str | None = None,
                    given: onnx.ModelProto | None = None) -> tuple[list, list, int]:
    """Emit image * masks ([K, H, W]), the model on that batch and SCORES [K, T]: the score of each masked
    image for each target (:func:`_emit_scores`). ``owner``: int64 [K], the row of IMAGE each mask
    belongs to; without it IMAGE has one row.

    Returns the forward nodes, their initializers, and the position in ``emit.nodes`` where the
    forward nodes must be inserted. With ``fp16`` the forward part computes in float16; ``given``: a
    forward graph from :func:`build_forward`, transformed (an int8 copy), used instead of the model's.
    Masking, scores and accumulations stay float32.
    """
    if given is not None:
        forward, inits = _given_forward(given, contract)
    else:
        forward = _forward_nodes(exported, _head_tensors(contract))
        used = {i for n in forward for i in n.input}
        inits = [t for t in exported.graph.initializer if t.name in used]
    if fp16:
        forward, inits = _half_precision(forward, inits, exported, contract)
    channel_axis = 1 if contract.input_layout == "NCHW" else 3
    image = IMAGE if owner is None else emit.op("Gather", [IMAGE, owner], axis=0)
    masked = emit.op("Mul", [image, emit.unsqueeze(masks, [channel_axis])])
    position = len(emit.nodes)
    for node in forward:
        node.input[:] = [masked if i == contract.input_name else i for i in node.input]
    _emit_scores(emit, contract)
    return forward, inits, position


def _emit_scores(emit: Emitter, contract: Contract) -> None:
    """SCORES [K, T] from the masked batch's head: a classifier's psi @ TARGET^T; a detector's D-RISE
    similarity of each masked image's detections to each target detection."""
    if not contract.detector:
        psi = emit_score(emit, emit.op("Flatten", [contract.output_name], axis=1), contract.score)
        emit.op("MatMul", [psi, emit.op("Transpose", [TARGET], perm=[1, 0])], outputs=[SCORES])
        return
    boxes, classes, objectness = emit_canonical_head(emit, contract.head)  # [K, A, 4], [K, A, C], [K, A]
    tiny = emit.const(np.array(1e-12, np.float32))
    zero = emit.const(np.zeros((), np.float32))
    detected = emit.unsqueeze(boxes, [1])  # [K, 1, A, 4]
    wanted = emit.unsqueeze(TARGET_BOXES, [0, 2])  # [1, T, 1, 4]
    low = emit.op("Max", [emit.slice(detected, [0], [2], [3]), emit.slice(wanted, [0], [2], [3])])
    high = emit.op("Min", [emit.slice(detected, [2], [4], [3]), emit.slice(wanted, [2], [4], [3])])
    overlap = emit.op("Max", [emit.op("Sub", [high, low]), zero])  # [K, T, A, 2]
    inter = emit.op("Mul", [emit.slice(overlap, [0], [1], [3]), emit.slice(overlap, [1], [2], [3])])

    def area(b):  # [..., 4] -> [..., 1]
        sides = emit.op("Max", [emit.op("Sub", [emit.slice(b, [2], [4], [3]), emit.slice(b, [0], [2], [3])]),
                                zero])
        return emit.op("Mul", [emit.slice(sides, [0], [1], [3]), emit.slice(sides, [1], [2], [3])])
    union = emit.op("Sub", [emit.op("Add", [area(detected), area(wanted)]), inter])
    iou = emit.reduce("ReduceSum", emit.op("Div", [inter, emit.op("Max", [union, tiny])]), [3],
                      keepdims=False)  # [K, T, A]
    norm = emit.op("Sqrt", [emit.reduce("ReduceSum", emit.op("Mul", [classes, classes]), [2], keepdims=True)])
    cosine = emit.op("Div", [emit.op("MatMul", [classes, emit.op("Transpose", [TARGET], perm=[1, 0])]),
                             emit.op("Max", [norm, tiny])])  # [K, A, T]
    weighted = emit.op("Mul", [emit.op("Transpose", [cosine], perm=[0, 2, 1]),
                               emit.unsqueeze(objectness, [1])])
    emit.reduce("ReduceMax", emit.op("Mul", [iou, weighted]), [2], keepdims=False, output=SCORES)  # [K, T]


def _assemble(exported: onnx.ModelProto, contract: Contract, emit: Emitter, forward: tuple,
              inputs: list, outputs: list, name: str, images: int | str = 1) -> onnx.ModelProto:
    """``images``: the batch of IMAGE (1, or "N" for the sampler's images)."""
    nodes_fw, inits_fw, position = forward
    image_dims = [images] + list(contract.input_shape[1:])
    inputs = [helper.make_tensor_value_info(IMAGE, onnx.TensorProto.FLOAT, image_dims)] + inputs
    inputs.append(helper.make_tensor_value_info(TARGET, onnx.TensorProto.FLOAT, ["T", contract.num_classes]))
    if contract.detector:
        inputs.append(helper.make_tensor_value_info(TARGET_BOXES, onnx.TensorProto.FLOAT, ["T", 4]))
    nodes = emit.nodes[:position] + nodes_fw + emit.nodes[position:]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits_fw + emit.initializers)
    model = helper.make_model(graph, opset_imports=list(exported.opset_import))
    model.ir_version = max(exported.ir_version, 7)
    return model


def _start(exported: onnx.ModelProto, prefix: str) -> tuple[Contract, Emitter]:
    contract = read_contract(exported)
    if contract is None:
        raise ModelInputError("the model has no SISE contract; run `python -m onnx_tools export` first")
    return contract, Emitter(default_opset(exported), prefix, taken_names(exported))


def build_sampler(exported: onnx.ModelProto, *, fp16: bool = False,
                  forward: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Build the sampler graph (see the module docstring) from a model made by the export step.
    ``fp16`` runs the model's forward part in float16 (for CUDA; needs onnxconverter-common); ``forward``
    replaces the model's forward part with a transformed copy of :func:`build_forward`'s graph (e.g. int8).

    Raises:
        ModelInputError: the model carries no SISE contract.
    """
    contract, emit = _start(exported, "sampler")
    height, width = image_size(contract)
    n_blocks = len(contract.blocks)
    ups, assign, inputs = [], [], []
    for b, block in enumerate(contract.blocks):
        _, channels, h, w = block.shape
        inputs += [helper.make_tensor_value_info(act_input(b), onnx.TensorProto.FLOAT,
                                                 ["N", channels, h, w]),
                   helper.make_tensor_value_info(idx_input(b), onnx.TensorProto.INT64, [f"K{b}"])]
        rows = emit.op("Reshape", [act_input(b), emit.ints([-1, h, w])])  # [N * C_b, h, w]
        chosen = emit.op("Gather", [rows, idx_input(b)], axis=0)  # [K_b, h, w]
        # rows @ chosen @ cols as 2-D MatMuls only: a block with no map in this chunk gives an empty batch,
        # and onnxruntime before 1.32 refuses to broadcast a batched MatMul (or FusedMatMul) over it.
        # The transposes swap the leading axes, which onnxruntime does not fold into the MatMuls.
        up_rows = emit.const(upsample_matrix(h, height).astype(np.float32), hint="rows")  # [H, h]
        up_cols = emit.const(upsample_matrix(w, width).T.astype(np.float32), hint="cols")  # [w, W]
        wide = emit.op("MatMul", [emit.op("Reshape", [chosen, emit.ints([-1, w])]), up_cols])  # [K_b h, W]
        by_row = emit.op("Transpose", [emit.op("Reshape", [wide, emit.ints([-1, h, width])])], perm=[1, 0, 2])
        up = emit.op("MatMul", [up_rows, emit.op("Reshape", [by_row, emit.ints([h, -1])])])  # [H, K_b W]
        ups.append(emit.op("Transpose", [emit.op("Reshape", [up, emit.ints([height, -1, width])])],
                           perm=[1, 0, 2]))  # [K_b, H, W]
        zeros = emit.op("Mul", [emit.op("Cast", [idx_input(b)], to=onnx.TensorProto.FLOAT),
                                emit.const(np.zeros((), np.float32))])
        onehot = np.eye(n_blocks, dtype=np.float32)[b:b + 1]
        assign.append(emit.op("Add", [emit.unsqueeze(zeros, [1]), emit.const(onehot, hint="layer")]))
    up = emit.op("Concat", ups, axis=0)  # [K, H, W]
    low = emit.reduce("ReduceMin", up, [1, 2], keepdims=True)
    spread = emit.op("Max", [emit.op("Sub", [emit.reduce("ReduceMax", up, [1, 2], keepdims=True), low]),
                             emit.const(np.array(1e-12, np.float32))])
    masks = emit.op("Div", [emit.op("Sub", [up, low]), spread])  # [K, H, W] in [0, 1]
    # [K]; a constant map (the caller should have dropped it) gets mask 0 and weight 0, not NaN
    mass = emit.op("Max", [emit.reduce("ReduceSum", masks, [1, 2], keepdims=False),
                           emit.const(np.array(1e-12, np.float32))])
    if fp16 and forward is not None:
        raise ModelInputError("build_sampler: fp16 and a given forward graph exclude each other")
    forward = _masked_forward(emit, exported, contract, masks, fp16, owner=OWNER, given=forward)
    inputs += [helper.make_tensor_value_info(KEEP, onnx.TensorProto.FLOAT, ["K", "T"]),
               helper.make_tensor_value_info(OWNER, onnx.TensorProto.INT64, ["K"])]
    weights = emit.op("Mul", [emit.op("Div", [SCORES, emit.unsqueeze(mass, [1])]), KEEP])  # [K, T]
    layer_weights = emit.op("Concat", assign, axis=0)  # [K, B]
    # [K, T * B]: map k's weight in the slot (target t, its layer)
    pairs = emit.op("Mul", [emit.unsqueeze(weights, [2]), emit.unsqueeze(layer_weights, [1])])  # [K, T, B]
    slots = emit.op("Reshape", [pairs, emit.ints([0, -1])])
    flat_masks = emit.op("Reshape", [masks, emit.ints([-1, height * width])])
    maps = emit.op("MatMul", [emit.op("Transpose", [slots], perm=[1, 0]), flat_masks])  # [T * B, H W]
    emit.op("Reshape", [maps, emit.ints([-1, n_blocks, height, width])], outputs=[LAYER_MAPS])
    outputs = [helper.make_tensor_value_info(LAYER_MAPS, onnx.TensorProto.FLOAT,
                                             ["T", n_blocks, height, width]),
               helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT, ["K", "T"])]
    return _assemble(exported, contract, emit, forward, inputs, outputs, "sise_sampler", images="N")


def build_mask_scorer(exported: onnx.ModelProto, *, fp16: bool = False) -> onnx.ModelProto:
    """Graph scoring arbitrary masks: inputs ``sampler/image`` [1, ...], ``scorer/masks`` float32
    [K, H, W], ``sampler/target`` [T, num_classes] (and a detector's ``sampler/target_boxes`` [T, 4]);
    output ``sampler/scores`` [K, T], each masked image's score for each target as the sampler scores it.
    Used by RISE, D-RISE and the Drop/Increase and deletion/insertion metrics, with the same masking
    convention."""
    contract, emit = _start(exported, "scorer")
    height, width = image_size(contract)
    forward = _masked_forward(emit, exported, contract, MASKS, fp16)
    inputs = [helper.make_tensor_value_info(MASKS, onnx.TensorProto.FLOAT, ["K", height, width])]
    outputs = [helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT, ["K", "T"])]
    return _assemble(exported, contract, emit, forward, inputs, outputs, "sise_mask_scorer")
