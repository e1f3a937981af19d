"""The contract between the export step and the engine, written into the model's ``metadata_props``.

The engine reads the single JSON value under :data:`CONTRACT_KEY`; it never guesses tensor names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import onnx

from .detection import DetectionHead

CONTRACT_KEY = "sise.contract"
CONTRACT_VERSION = 1
TARGET_INPUT = "sise_target"
# psi, the score of the explained class, per score kind: the ONNX op applied over the class axis of the
# class output (None: the output itself). The one list of score kinds; emitted by onnx_tools.scores.
SCORE_OPS = {"softmax": "Softmax", "sigmoid": "Sigmoid", "logit": None, "identity": None}
SCORE_KINDS = tuple(SCORE_OPS)


def act_output(index: int) -> str:
    """Name of the graph output carrying block ``index``'s activation, [N, C, h, w]."""
    return f"sise/act/{index}"


def range_output(index: int) -> str:
    """Name of the graph output carrying block ``index``'s per-channel spatial max - min, [N, C]."""
    return f"sise/range/{index}"


def grad_output(index: int) -> str:
    """Name of the graph output carrying block ``index``'s spatially averaged gradient, [N, C]."""
    return f"sise/grad/{index}"


@dataclass(frozen=True)
class BlockInfo:
    """One convolutional block: the model tensor it taps and its shape for batch 1 (1, C, h, w)."""

    index: int
    tensor: str
    shape: tuple[int, ...]
    act_output: str
    grad_output: str
    range_output: str

    @property
    def channels(self) -> int:
        return self.shape[1]


TASKS = ("classify", "detect")


@dataclass(frozen=True)
class Contract:
    """Everything the engine needs to drive an exported model.

    A detector (``task`` "detect") has ``head``: where its head is and how to read it; ``output_name`` is
    then the head's scores tensor, ``num_classes`` its class count, and the target input weighs
    (anchor, class) pairs, [N, A, C]. A classifier's contract has neither key (older engines read it)."""

    input_name: str
    input_layout: str  # "NCHW" or "NHWC"
    input_shape: tuple  # the image input's dims (batch may be a string for a dynamic batch)
    output_name: str
    num_classes: int
    score: str
    blocks: tuple[BlockInfo, ...]
    target_input: str = TARGET_INPUT
    version: int = CONTRACT_VERSION
    source_opset: int = 0
    exporter: str = field(default="onnx_tools")
    task: str = "classify"
    head: DetectionHead | None = None
    # inputs besides the image, written into the graph as constants (onnx_tools.extra_inputs): name ->
    # {"shape": declared dims, "dtype": numpy name, "value": per image, nested lists}
    extra_inputs: dict = field(default_factory=dict)

    @property
    def detector(self) -> bool:
        return self.task == "detect"

    def to_json(self) -> str:
        raw = asdict(self)
        if not self.detector:
            raw.pop("task")
            raw.pop("head")
        if not self.extra_inputs:  # (older engines read the contract of a one-input model)
            raw.pop("extra_inputs")
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Contract:
        raw = json.loads(text)
        if raw.get("head") is not None:
            raw["head"] = DetectionHead.from_dict(raw["head"])
        blocks = tuple(
            BlockInfo(
                index=b["index"],
                tensor=b["tensor"],
                shape=tuple(b["shape"]),
                act_output=b["act_output"],
                grad_output=b["grad_output"],
                range_output=b["range_output"],
            )
            for b in raw.pop("blocks")
        )
        raw["input_shape"] = tuple(raw["input_shape"])
        return cls(blocks=blocks, **raw)


def read_contract(model: onnx.ModelProto) -> Contract | None:
    """Return the model's contract, or None when the model was not exported by this tool."""
    for prop in model.metadata_props:
        if prop.key == CONTRACT_KEY:
            return Contract.from_json(prop.value)
    return None


def write_contract(model: onnx.ModelProto, contract: Contract) -> None:
    """Store ``contract`` in ``model.metadata_props`` (replacing an older value)."""
    keep = [p for p in model.metadata_props if p.key != CONTRACT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key = CONTRACT_KEY
    entry.value = contract.to_json()
