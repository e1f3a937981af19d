"""Registry of vector-Jacobian product (VJP) builders, one small function per ONNX op type.

A builder receives a :class:`VjpContext` and returns, for each node input, the name of the tensor
holding the gradient of the loss with respect to that input (None where no gradient is needed).
Adding an op = one decorated function in ``ops/<family>.py`` plus one finite-difference test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..graph import DEFAULT_DOMAINS, GraphIndex
from .emitter import Emitter

VjpFn = Callable[["VjpContext"], list]
_REGISTRY: dict[str, VjpFn] = {}


class UnsupportedVariant(Exception):
    """A registered op used with attributes or dynamic inputs its builder cannot handle."""


def register(*op_types: str) -> Callable[[VjpFn], VjpFn]:
    def deco(fn: VjpFn) -> VjpFn:
        for op_type in op_types:
            _REGISTRY[op_type] = fn
        return fn
    return deco


def lookup(node: onnx.NodeProto) -> VjpFn | None:
    if node.domain not in DEFAULT_DOMAINS:
        return None
    return _REGISTRY.get(node.op_type)


def supported_ops() -> list[str]:
    return sorted(_REGISTRY)


@dataclass
class VjpContext:
    """What one VJP builder sees.

    Attributes:
        node: the forward node (from the analysis copy; same order and names as the model).
        position: the node's index in the graph, for requesting extra forward outputs.
        index: static shapes and constants of the forward graph (batch 1).
        emit: where new nodes go.
        grads_out: gradient tensor of each node output, or None.
        needs: whether each node input needs a gradient.
        extra_outputs: (position, slot, name) forward outputs the builder asks to add (e.g. MaxPool Indices).
    """

    node: onnx.NodeProto
    position: int
    index: GraphIndex
    emit: Emitter
    grads_out: list
    needs: list
    extra_outputs: list = field(default_factory=list)

    @property
    def g(self) -> str:
        return self.grads_out[0]

    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    @property
    def opset(self) -> int:
        return self.index.opset

    @property
    def dtype(self) -> np.dtype:
        return self.index.dtype(self.node.output[0])

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index.shape(name)

    def input(self, i: int) -> str:
        """Name of input ``i`` or "" when absent."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def const_input(self, i: int, what: str) -> np.ndarray | None:
        """Static value of optional input ``i`` (None when absent); raises when it is computed at run time."""
        name = self.input(i)
        if not name:
            return None
        value = self.index.const_value(name)
        if value is None:
            raise UnsupportedVariant(f"its {what} input '{name}' is computed at run time; "
                                     "it must be a constant")
        return value

    def scalar(self, value: float) -> str:
        return self.emit.const(np.asarray(value, dtype=self.dtype), hint="k")

    def forward_output(self, slot: int, hint: str) -> str:
        """Name of forward output ``slot``, adding it to the node when the model does not produce it."""
        if slot < len(self.node.output) and self.node.output[slot]:
            return self.node.output[slot]
        name = self.emit.fresh(hint)
        self.extra_outputs.append((self.position, slot, name))
        return name

    def unbroadcast(self, g: str, operand: str, g_shape: tuple[int, ...] | None = None) -> str:
        """Sum ``g`` (shaped ``g_shape``, by default like the node output) down to ``operand``'s shape."""
        out_shape = g_shape if g_shape is not None else self.shape(self.y)
        in_shape = self.shape(operand)
        lead = len(out_shape) - len(in_shape)
        if lead > 0:
            g = self.emit.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
            out_shape = out_shape[lead:]
        axes = [i for i, (o, n) in enumerate(zip(out_shape, in_shape)) if n == 1 and o != 1]
        if axes:
            g = self.emit.reduce("ReduceSum", g, axes, keepdims=True)
        return g
