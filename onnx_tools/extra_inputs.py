"""Inputs besides the image (a model that takes the image and a small vector, joined before its head):
each is given one constant value, written into the graph, so the exported model takes the image alone and
every later step (block discovery, gradients, the sampler's batches of masked images) sees a one-input
classifier.

An input whose first axis is the batch (a dynamic first dim, or 1) gets its value repeated over the
image's batch (``Expand`` to ``Shape(image)[0]``), so batches of masked images run as single images do; an
input without a batch axis becomes a constant.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelInputError
from .graph import FLOAT_TYPES, dims_of, taken_names

CONFIG_KEY = "export.extra_inputs"


def parse_value(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--extra-input``, VALUE a number or a JSON list (``meta=[0.5, 1, 0, 2]``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ModelInputError(f"--extra-input '{text}': expected NAME=VALUE, e.g. meta=[0.5,1,0,2]")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError as e:
        raise ModelInputError(f"--extra-input '{text}': the value is not a number or a JSON list "
                              f"({e.msg}), e.g. {name.strip()}=[0.5,1,0,2]") from e


def _is_image_like(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    return t.elem_type in FLOAT_TYPES and t.HasField("shape") and len(t.shape.dim) == 4


def _advice(name: str, dims: list) -> str:
    shape = [d if isinstance(d, int) else 1 for d in dims[1:]] if dims else []
    example = json.dumps(np.zeros(shape).tolist()) if shape and np.prod(shape) <= 8 else "VALUE"
    return (f"give it the constant value every image is explained with: --extra-input {name}={example} "
            f"(inspector config: {CONFIG_KEY}: {{{name}: {example}}})")


def other_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def bake(model: onnx.ModelProto, values: dict[str, object]) -> dict[str, dict]:
    """Replace, in place, each input named in ``values`` by its constant value; returns what was written
    per input (shape, dtype, value), for the contract.

    Raises:
        ModelInputError: an input left without a value (naming it and the option), a name that is not an
            input, or a value of the wrong shape.
    """
    inputs = {vi.name: vi for vi in other_inputs(model)}
    unknown = [n for n in values if n not in inputs]
    if unknown:
        raise ModelInputError(f"extra input '{unknown[0]}' ({CONFIG_KEY} / --extra-input) is not an input of "
                              f"the model; its inputs: {list(inputs)}")
    images = [vi for vi in inputs.values() if _is_image_like(vi)]
    if len(images) == 1 and images[0].name in values:
        raise ModelInputError(f"input '{images[0].name}' is the image input: it cannot take a constant "
                              f"value; leave it out of --extra-input / {CONFIG_KEY}")
    left = [vi for vi in inputs.values() if vi.name not in values]
    if images and not left:
        raise ModelInputError(f"every image-like input ({', '.join(vi.name for vi in images)}) was given a "
                              f"value: leave the image's out of --extra-input / {CONFIG_KEY}")
    for vi in left:
        if not _is_image_like(vi):
            raise ModelInputError(f"input '{vi.name}' {dims_of(vi)} is not the image; "
                                  + _advice(vi.name, dims_of(vi)))
    if len(left) > 1:
        listed = ", ".join(f"'{vi.name}' {dims_of(vi)}" for vi in left)
        raise ModelInputError(f"the model has more than one image-like input ({listed}); SISE explains one "
                              f"image: give each of the others a constant value, e.g. "
                              + _advice(left[1].name, dims_of(left[1])))
    if not left:
        return {}  # no image at all: find_image_input says so
    image = left[0]
    baked = {}
    for name, value in values.items():
        baked[name] = _bake_one(model, inputs[name], value, image.name)
    return baked


def _numbers_only(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_numbers_only(v) for v in value)
    number = isinstance(value, (int, float, np.integer, np.floating))
    return number and not isinstance(value, (bool, np.bool_))


def _checked_array(name: str, value, dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of ``dtype``: finite numbers only (no bool, null or text), whole numbers
    within the type's range for an integer input."""
    short = json.dumps(value)[:60] if _numbers_only(value) else repr(value)[:60]
    where = f"input '{name}': value {short} (--extra-input / {CONFIG_KEY})"
    if not _numbers_only(value):
        raise ModelInputError(f"{where} must be a number or a list of numbers")
    try:
        exact = np.asarray(value, dtype=np.float64)
    except (ValueError, OverflowError) as e:  # ragged lists
        raise ModelInputError(f"{where} is not a rectangular list of numbers ({e})") from e
    if not np.isfinite(exact).all():
        raise ModelInputError(f"{where} holds a number that is not finite")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        whole = (exact == np.round(exact)).all()
        if not whole or exact.min(initial=0) < info.min or exact.max(initial=0) > info.max:
            raise ModelInputError(f"{where} must be whole numbers in [{info.min}, {info.max}] "
                                  f"({dtype.name} input)")
        return np.asarray(value, dtype=dtype)  # exact for integers beyond float64's 2^53
    if dtype.kind == "f" and np.abs(exact).max(initial=0) > np.finfo(dtype).max:
        raise ModelInputError(f"{where} is too large for a {dtype.name} input")
    if dtype.kind not in "fiub":
        raise ModelInputError(f"{where}: the input's type {dtype.name} cannot take a constant value here")
    return exact.astype(dtype)


def _bake_one(model: onnx.ModelProto, vi: onnx.ValueInfoProto, value, image: str) -> dict:
    dims = dims_of(vi)
    name = vi.name
    if any(not isinstance(d, int) for d in dims[1:]):
        raise ModelInputError(f"input '{name}' has dims {dims}: only its first (batch) dim may be dynamic "
                              "for a constant value; re-export the model with that input's size fixed")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    batched = bool(dims) and (not isinstance(dims[0], int) or dims[0] == 1)
    per_image = tuple(dims[1:]) if batched else tuple(dims)
    array = _checked_array(name, value, dtype)
    if array.shape == ():
        array = np.full(per_image, array, dtype=dtype)
    elif batched and array.shape == (1, *per_image):
        array = array[0]
    if array.shape != per_image:
        raise ModelInputError(f"input '{name}' {dims} needs a value of shape {list(per_image)} per image (or "
                              f"one number for all of it); {CONFIG_KEY} gives shape {list(array.shape)}")
    graph = model.graph
    kept = [v for v in graph.input if v.name != name]
    del graph.input[:]
    graph.input.extend(kept)
    if not batched:
        graph.initializer.append(numpy_helper.from_array(array, name))
    else:
        taken = taken_names(model)

        def fresh(hint: str) -> str:
            k = 0
            while f"sise/extra/{name}/{hint}{k}" in taken:
                k += 1
            taken.add(f"sise/extra/{name}/{hint}{k}")
            return f"sise/extra/{name}/{hint}{k}"

        const, rest, index = fresh("value"), fresh("dims"), fresh("batch_axis")
        shape, batch, target = fresh("image_shape"), fresh("batch"), fresh("shape")
        graph.initializer.extend([numpy_helper.from_array(array[None], const),
                                  numpy_helper.from_array(np.asarray(per_image, np.int64), rest),
                                  numpy_helper.from_array(np.asarray([0], np.int64), index)])
        nodes = [helper.make_node("Shape", [image], [shape], name=fresh("node")),
                 helper.make_node("Gather", [shape, index], [batch], name=fresh("node"), axis=0),
                 helper.make_node("Concat", [batch, rest], [target], name=fresh("node"), axis=0),
                 helper.make_node("Expand", [const, target], [name], name=fresh("node"))]
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)
    return {"shape": list(dims), "dtype": dtype.name, "value": array.tolist()}
