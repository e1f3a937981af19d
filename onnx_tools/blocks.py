"""Block discovery: which tensor represents each convolutional block.

Rule (SISE, "block-wise feature explanation"): signals may skip convolutional layers but not
down-sampling layers, so the last tensor at each spatial resolution that *every* path from the image
to the class output passes through (a dominator of the output) stands for that block.

Details:
- Only tensors on the NCHW side are candidates: produced by a Conv/pooling op or derived from one
  without a layout-changing op (Transpose, Reshape, ...) in between. This skips the image input, its
  pre-processing, and NHWC tensors of Keras heads.
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

from .errors import BlockDiscoveryError
from .graph import GraphIndex

LAYOUT_SOURCES = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}
LAYOUT_BREAKERS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "SpaceToDepth", "DepthToSpace",
                   "Gemm", "MatMul", "Einsum"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
CONV_OPS = LAYOUT_SOURCES - POOL_OPS


def path_tensors(index: GraphIndex, source: str, sink: str) -> set[str]:
    """Differentiable tensors on some path from ``source`` to ``sink`` (both included)."""
    return index.reach_forward([source]) & index.reach_backward([sink])


def nchw_tensors(index: GraphIndex) -> set[str]:
    """Rank-4 tensors in channels-first layout downstream of a convolution or pooling op."""
    out: set[str] = set()
    for node in index.nodes:
        if node.op_type in LAYOUT_BREAKERS:
            continue
        if node.op_type in LAYOUT_SOURCES or any(i in out for i in node.input):
            out.update(o for o in node.output if index.rank(o) == 4)
    return out


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


def _moves_pixels(index: GraphIndex, node) -> bool:
    """Whether ``node``'s output holds the values of its input elsewhere than the image put them (its maps
    would not line up with the image) or twice: padded, flipped, rolled or strided copies, tiles."""
    if node.op_type in ("Pad", "Tile"):
        return True
    if node.op_type in ("Concat", "Gather"):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return axis % 4 in (2, 3)
    if node.op_type == "Slice":
        before, after = index.info.get(node.input[0]), index.info.get(node.output[0])
        if before is None or after is None or before.shape is None or after.shape is None:
            return True
        if tuple(before.shape[2:]) != tuple(after.shape[2:]):
            return True
        if len(node.input) <= 4 or not node.input[4]:
            return False  # unit steps, and the spatial size is kept: the identity on those axes
        steps = index.const_value(node.input[4])
        if steps is None:
            return True  # steps computed at run time: assume they move
        axes = index.const_value(node.input[3]) if node.input[3] else None
        axes = range(len(steps)) if axes is None else [int(a) % 4 for a in axes.reshape(-1)]
        return any(int(step) != 1 and axis in (2, 3) for axis, step in zip(axes, steps.reshape(-1)))
    return False


def discover_blocks(index: GraphIndex, source: str, sink: str) -> list[str]:
    """Automatic block choice, shallow to deep. Raises when nothing qualifies."""
    channels_first = nchw_tensors(index)
    conv_sizes = _conv_output_sizes(index, path_tensors(index, source, sink))
    groups: dict[tuple[int, int], list[str]] = {}
    for name in dominators(index, source, sink):
        if name not in channels_first or name in index.graph_inputs or not index.info[name].is_float:
            continue  # (a QDQ model's quantized activations are integers; their dequantized copies count)
        if _moves_pixels(index, index.nodes[index.producer[name]]):
            continue
        shape = index.info[name].shape
        if shape is None or any(d <= 0 for d in shape) or shape[2] * shape[3] <= 1:
            continue
        if (shape[2], shape[3]) not in conv_sizes:
            continue
        groups.setdefault((shape[2], shape[3]), []).append(name)
    pos = index.topo_position()
    chosen = []
    for members in groups.values():
        if all(index.nodes[index.producer[m]].op_type in POOL_OPS for m in members):
            continue
        chosen.append(max(members, key=pos.__getitem__))
    if not chosen:
        raise BlockDiscoveryError(
            f"no convolutional block found between input '{source}' and output '{sink}' (no channels-first "
            "tensor with spatial size > 1 lies on every path); name the block tensors with "
            "--blocks NAME,NAME,... (`python -m onnx_tools inspect MODEL` lists the tensors)")
    return sorted(chosen, key=pos.__getitem__)


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
