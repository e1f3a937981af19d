"""Export passes as objects, after onnx-ir's pass infrastructure (``onnx_ir.passes``).

A :class:`Pass` declares what must hold before it runs (:meth:`Pass.requires`) and what holds after it
(:meth:`Pass.ensures`); calling it runs requires -> :meth:`Pass.call` -> ensures. :class:`PassManager`
(or :func:`run_passes`) runs a list of passes that way, in order, and records which modified the model.
The rules between passes (expose_blocks runs after add_gradients; node positions read in the batch-1
analysis copy hold in the model) are such checks, not comments: a broken one raises
:class:`~onnx_tools.errors.PassConditionError` naming the pass and the condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx

from ..errors import PassConditionError
from ..graph import GraphIndex


@dataclass(frozen=True)
class ExportState:
    """What the passes of one export share and only read.

    Attributes:
        index: the batch-1 analysis copy of the model (static shapes and values, node positions).
        blocks: the block tensors, shallow to deep, by their names in the original model.
        batch_dim: the image input's batch dim (int or symbolic name) for the new outputs' types.
    """

    index: GraphIndex
    blocks: tuple[str, ...]
    batch_dim: int | str


@dataclass(frozen=True)
class PassResult:
    """What one pass did: the (same, rewritten in place) model, whether it changed it, the graph outputs
    it added, in order."""

    model: onnx.ModelProto
    modified: bool
    outputs: tuple[str, ...] = ()


class Pass:
    """One graph rewrite. Subclasses set :attr:`name` and override :meth:`call`, and
    :meth:`requires` / :meth:`ensures` where they have conditions (raising via :meth:`fail`)."""

    name = "pass"

    def requires(self, model: onnx.ModelProto, state: ExportState) -> None:
        """Raise :meth:`fail` ("requires") when ``model`` is not fit for this pass."""

    def ensures(self, model: onnx.ModelProto, state: ExportState) -> None:
        """Raise :meth:`fail` ("ensures") when the pass did not leave what it promises."""

    def call(self, model: onnx.ModelProto, state: ExportState) -> PassResult:
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto, state: ExportState) -> PassResult:
        self.requires(model, state)
        result = self.call(model, state)
        self.ensures(result.model, state)
        return result

    def fail(self, stage: str, condition: str) -> PassConditionError:
        """The error for a broken condition; ``stage`` is "requires" or "ensures"."""
        kind = {"requires": "precondition", "ensures": "postcondition"}[stage]
        return PassConditionError(f"export pass '{self.name}': {kind} not met: {condition}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(frozen=True)
class PassRun:
    """What :class:`PassManager` did: the final model, whether any pass modified it, and each pass's
    result by pass name, in run order."""

    model: onnx.ModelProto
    modified: bool
    results: dict[str, PassResult]

    @property
    def modified_by(self) -> dict[str, bool]:
        return {name: r.modified for name, r in self.results.items()}


class PassManager:
    """Runs passes in order, each as requires -> call -> ensures, on the model the previous one returned."""

    def __init__(self, passes: Sequence[Pass]):
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise ValueError(f"pass names must be unique: {names}")
        self.passes = list(passes)

    def __call__(self, model: onnx.ModelProto, state: ExportState) -> PassRun:
        results: dict[str, PassResult] = {}
        for p in self.passes:
            result = p(model, state)
            results[p.name] = result
            model = result.model
        return PassRun(model=model, modified=any(r.modified for r in results.values()), results=results)


def run_passes(model: onnx.ModelProto, state: ExportState, passes: Sequence[Pass]) -> PassRun:
    """Shorthand for ``PassManager(passes)(model, state)``."""
    return PassManager(passes)(model, state)


# ----- small facts the conditions are written with -----------------------------------------------------
def graph_inputs(model: onnx.ModelProto) -> set[str]:
    return {vi.name for vi in model.graph.input}


def graph_outputs(model: onnx.ModelProto) -> set[str]:
    return {vi.name for vi in model.graph.output}


def produced(model: onnx.ModelProto) -> set[str]:
    """Tensors the model defines: node outputs, graph inputs, initializers."""
    names = {o for node in model.graph.node for o in node.output if o}
    return names | graph_inputs(model) | {t.name for t in model.graph.initializer}


def missing(names: Iterable[str], present: set[str]) -> list[str]:
    return [n for n in names if n not in present]
