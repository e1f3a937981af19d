"""Block discovery: which tensor represents each convolutional block.

Rule (SISE, "block-wise feature explanation"): signals may skip convolutional layers but not
down-sampling layers, so the last tensor at each spatial resolution that *every* path from the image
to the class output passes through (a dominator of the output) stands for that block.

Details:
- Only activations downstream of a Conv/pooling op are candidates (not the image input or its
  pre-processing), channels-first or channels-last: their layout is followed through Transposes
  ([0, 2, 3, 1] to NHWC, [0, 3, 1, 2] back), and other layout-changing ops (Reshape, Flatten, ...) end it.
  A graph that computes in NHWC between its convolutions (a PyTorch re-export of a TensorFlow model
  transposes back after every Conv) has its blocks where an NCHW graph of the same network has them; a
  chosen NHWC tensor is read through a Transpose to NCHW that the export inserts
  (:func:`channels_first_views`).
- Dominators are found with one sweep over a topological order of the tensor graph: a tensor T is
  on every path from X to Y iff no edge (a -> b) of that graph has pos(a) < pos(T) < pos(b).
- Dominators are grouped by spatial size; the last of each group (in topological order) is kept;
  groups holding only pooling outputs and 1x1 tensors are dropped, and so are sizes no convolution on
  the path produces (padded or cropped copies built from Slice and Concat: circular padding, a pad then
  a crop); copies whose pixels no longer line up with the image are never candidates: zero-padded
  (Pad outputs, e.g. the "same" padding before a strided conv), flipped, rolled or strided (Slice,
  Concat or Gather on a spatial axis), and tiles (Tile, which also repeats channels).
"""

from __future__ import annotations

import onnx

from .errors import BlockDiscoveryError
from .graph import GraphIndex, taken_names

LAYOUT_SOURCES = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}
LAYOUT_BREAKERS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "SpaceToDepth", "DepthToSpace",
                   "Gemm", "MatMul", "Einsum"}
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
CONV_OPS = LAYOUT_SOURCES - POOL_OPS


def path_tensors(index: GraphIndex, source: str, sink: str) -> set[str]:
    """Differentiable tensors on some path from ``source`` to ``sink`` (both included)."""
    return index.reach_forward([source]) & index.reach_backward([sink])


def layouts(index: GraphIndex) -> dict[str, str]:
    """"NCHW" or "NHWC" for each rank-4 tensor downstream of a convolution or pooling op (see the module's
    notes); tensors whose inputs mix the two are left out."""
    out: dict[str, str] = {}
    for node in index.nodes:
        outputs = [o for o in node.output if index.rank(o) == 4]
        if node.op_type in LAYOUT_SOURCES:
            out.update(dict.fromkeys(outputs, "NCHW"))
        elif node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            turned = {("NCHW", str(TO_CHANNELS_LAST)): "NHWC", ("NHWC", str(TO_CHANNELS_FIRST)): "NCHW"}
            layout = turned.get((out.get(node.input[0]), str(perm)))
            if layout is not None:
                out.update(dict.fromkeys(outputs, layout))
        elif node.op_type not in LAYOUT_BREAKERS:
            seen = {out[i] for i in node.input if i in out}
            if len(seen) == 1:
                out.update(dict.fromkeys(outputs, seen.pop()))
    return out


def _spatial_axes(layout: str) -> tuple[int, int]:
    return (2, 3) if layout == "NCHW" else (1, 2)


def dominators(index: GraphIndex, source: str, sink: str) -> list[str]:
    """Tensors strictly between ``source`` and ``sink`` that every source->sink path passes through."""
    on_path = path_tensors(index, source, sink)
    if sink not in on_path:
        raise BlockDiscoveryError(f"the class output '{sink}' does not depend on the image input '{source}'")
    pos = index.topo_position()
    order = sorted(on_path, key=pos.__getitem__)
    rank = {name: r for r, name in enumerate(order)}
    cover = [0] * (len(order) + 1)
    for node in index.nodes:
        ins = [rank[i] for i in node.input if i in rank]
        outs = [rank[o] for o in node.output if o in rank]
        for a in ins:
            for b in outs:
                if b > a + 1:
                    cover[a + 1] += 1
                    cover[b] -= 1
    result, running = [], 0
    for r, name in enumerate(order):
        running += cover[r]
        if running == 0 and name not in (source, sink):
            result.append(name)
    return result


def _conv_output_sizes(index: GraphIndex, on_path: set[str]) -> set[tuple[int, int]]:
    """Spatial sizes of the rank-4 tensors that convolutions on the path produce."""
    sizes = set()
    for node in index.nodes:
        if node.op_type in CONV_OPS:
            for out in node.output:
                info = index.info.get(out)
                if out in on_path and info is not None and info.shape is not None and len(info.shape) == 4:
                    sizes.add((info.shape[2], info.shape[3]))
    return sizes


def _moves_pixels(index: GraphIndex, node, spatial: tuple[int, int] = (2, 3)) -> bool:
    """Whether ``node``'s output holds the values of its input elsewhere than the image put them (its maps
    would not line up with the image) or twice: padded, flipped, rolled or strided copies, tiles.
    ``spatial``: the output's height and width axes."""
    if node.op_type in ("Pad", "Tile"):
        return True
    if node.op_type in ("Concat", "Gather"):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return axis % 4 in spatial
    if node.op_type == "Slice":
        before, after = index.info.get(node.input[0]), index.info.get(node.output[0])
        if before is None or after is None or before.shape is None or after.shape is None:
            return True
        if [before.shape[a] for a in spatial] != [after.shape[a] for a in spatial]:
            return True
        if len(node.input) <= 4 or not node.input[4]:
            return False  # unit steps, and the spatial size is kept: the identity on those axes
        steps = index.const_value(node.input[4])
        if steps is None:
            return True  # steps computed at run time: assume they move
        axes = index.const_value(node.input[3]) if node.input[3] else None
        axes = range(len(steps)) if axes is None else [int(a) % 4 for a in axes.reshape(-1)]
        return any(int(step) != 1 and axis in spatial for axis, step in zip(axes, steps.reshape(-1)))
    return False


def discover_blocks(index: GraphIndex, source: str, sink: str) -> list[str]:
    """Automatic block choice, shallow to deep (channels-last ones among them are named by
    :func:`channels_last`). Raises when nothing qualifies."""
    layout = layouts(index)
    conv_sizes = _conv_output_sizes(index, path_tensors(index, source, sink))
    groups: dict[tuple[int, int], list[str]] = {}
    for name in dominators(index, source, sink):
        if name not in layout or name in index.graph_inputs or not index.info[name].is_float:
            continue  # (a QDQ model's quantized activations are integers; their dequantized copies count)
        spatial = _spatial_axes(layout[name])
        if _moves_pixels(index, index.nodes[index.producer[name]], spatial):
            continue
        shape = index.info[name].shape
        if shape is None or any(d <= 0 for d in shape):
            continue
        size = (shape[spatial[0]], shape[spatial[1]])
        if size[0] * size[1] <= 1 or size not in conv_sizes:
            continue
        groups.setdefault(size, []).append(name)
    pos = index.topo_position()
    chosen = []
    for members in groups.values():
        if all(index.nodes[index.producer[m]].op_type in POOL_OPS for m in members):
            continue
        chosen.append(max(members, key=pos.__getitem__))
    if not chosen:
        raise BlockDiscoveryError(
            f"no convolutional block found between input '{source}' and output '{sink}' (no activation "
            "with spatial size > 1 downstream of a convolution lies on every path); name the block tensors "
            "with --blocks NAME,NAME,... (`python -m onnx_tools inspect MODEL` lists the tensors)")
    return sorted(chosen, key=pos.__getitem__)


def channels_last(index: GraphIndex, names: list[str]) -> list[str]:
    """Those of ``names`` that are NHWC activations."""
    layout = layouts(index)
    return [n for n in names if layout.get(n) == "NHWC"]


def channels_first_views(model: onnx.ModelProto, names: list[str]) -> dict[str, str]:
    """Read each NHWC tensor of ``names`` through ``Transpose([0, 3, 1, 2])``, in place: the NCHW view
    (the block) is transposed back for the tensor's readers, so the model's values are unchanged (both
    transposes are exact). Returns tensor -> its view's name."""
    taken = taken_names(model)
    views, nodes = {}, []
    for name in names:
        view, back = f"sise/nchw/{name}", f"sise/nhwc/{name}"
        if view in taken or back in taken:
            raise BlockDiscoveryError(f"internal error: tensor names {view}, {back} are taken; "
                                      "please report it")
        for node in model.graph.node:
            for i, x in enumerate(node.input):
                if x == name:
                    node.input[i] = back
        views[name] = view
        nodes.append((name, [onnx.helper.make_node("Transpose", [name], [view], name=f"{view}/node",
                                                   perm=TO_CHANNELS_FIRST),
                             onnx.helper.make_node("Transpose", [view], [back], name=f"{back}/node",
                                                   perm=TO_CHANNELS_LAST)]))
    for name, pair in nodes:  # right after the producer, keeping the order topological
        at = next(p for p, node in enumerate(model.graph.node) if name in node.output)
        for k, node in enumerate(pair):
            model.graph.node.insert(at + 1 + k, node)
    return views


def _looks_channels_last(shape, image_hw: tuple[int, int] | None) -> bool:
    """[1, h, w, C] rather than [1, C, h, w]: axes 1-2 have the image's aspect ratio and axes 2-3 do not."""
    if image_hw is None or min(shape[1:]) <= 0:
        return False
    ratio = image_hw[0] / image_hw[1]
    close = (lambda a, b: abs(a / b / ratio - 1) < 0.1)
    return close(shape[1], shape[2]) and not close(shape[2], shape[3])


def check_explicit_blocks(index: GraphIndex, names: list[str], source: str, sink: str,
                          image_hw: tuple[int, int] | None = None) -> list[str]:
    """Validate user-named block tensors (channels-first, on the path from input to output) and order
    them shallow to deep. ``image_hw``: the input's height and width, to tell [N, h, w, C] tensors."""
    if len(set(names)) != len(names):
        raise BlockDiscoveryError(f"--blocks names a tensor twice: {names}")
    on_path = path_tensors(index, source, sink)
    for name in names:
        if name not in index.info and name not in index.producer:
            raise BlockDiscoveryError(f"--blocks: no tensor named '{name}' in the model; "
                                      "`python -m onnx_tools inspect MODEL` lists the block candidates")
        if index.rank(name) != 4:
            raise BlockDiscoveryError(f"--blocks: tensor '{name}' has shape {index.info[name].shape}; "
                                      "a block must be a rank-4 activation [N, C, h, w]")
        if _looks_channels_last(index.shape(name), image_hw):
            raise BlockDiscoveryError(f"--blocks: tensor '{name}' {index.shape(name)} looks channels-last "
                                      "[N, h, w, C]; a block must be channels-first [N, C, h, w]: name the "
                                      "tensor after its Transpose (or the Conv output before it); "
                                      "`python -m onnx_tools inspect MODEL` lists the candidates")
        if name not in on_path:
            raise BlockDiscoveryError(f"--blocks: tensor '{name}' is not on a differentiable path from input "
                                      f"'{source}' to output '{sink}'")
    pos = index.topo_position()
    return sorted(names, key=pos.__getitem__)
