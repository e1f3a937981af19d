"""`python -m onnx_tools export|inspect|example`: a thin shell over :mod:`onnx_tools.export`.

Errors, usage errors included, are printed as one line (``error: ...``) with exit code 2; nothing is
left behind on failure. ``--debug`` (before the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
from collections import Counter
from typing import NoReturn

from . import contract as C
from .detection import CONVENTIONS
from .errors import ExportError
from .export import analyse, export_file
from .extra_inputs import bake, other_inputs, parse_value
from .gradients import gradient_path
from .gradients.registry import lookup
from .graph import dims_of, load_model
from .model_io import parse_shape


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line, like every other error (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        return importlib.metadata.version("sise-inspector")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _blocks_arg(text: str) -> str | list[str]:
    return "auto" if text == "auto" else [t.strip() for t in text.split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blocks", default="auto", type=_blocks_arg,
                   help="'auto' (default) or comma-separated tensor names, one per block")
    p.add_argument("--input-shape", type=_shape_arg, default=None,
                   help="image input dims in the model's own layout, e.g. 1,3,224,224 "
                        "(needed for dynamic H/W)")
    p.add_argument("--output", default=None,
                   help="class-score output name (a detector's head output) when the model has several")
    p.add_argument("--task", default="classify", choices=C.TASKS,
                   help="classify (default): a [N, num_classes] output; detect: a one-stage detector's head")
    p.add_argument("--head", default="auto", choices=("auto", *CONVENTIONS),
                   help="with --task detect: the head's convention (default: found from its outputs; nms: "
                        "the tensors feeding a NonMaxSuppression node; gfl: class scores and box bins per "
                        "stride; centernet: heatmap, sizes and offsets)")
    p.add_argument("--layout", default=None, choices=("NCHW", "NHWC"),
                   help="the image input's layout (default: found from the graph)")
    p.add_argument("--extra-input", action="append", default=[], metavar="NAME=VALUE",
                   help="a constant value for an input besides the image (a number or a JSON list, e.g. "
                        "meta=[0.5,1,0,2]), written into the exported graph; once per such input")
    p.add_argument("--keep-batch", action="store_true",
                   help="keep a fixed batch of 1 (by default it is freed when outputs show that is safe)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m onnx_tools", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onnx_tools {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export",
                        help="rewrite a classifier so it also returns block activations and gradients")
    ex.add_argument("model", help="input ONNX model (never modified)")
    ex.add_argument("-o", "--out", required=True, help="output path, e.g. model.sise.onnx")
    ex.add_argument("--score", default="softmax", choices=C.SCORE_KINDS,
                    help="confidence psi of the explained class (default softmax; identity when the model "
                         "already outputs probabilities)")
    _common(ex)
    ins = sub.add_parser("inspect", help="print discovered blocks and the ops on the gradient path")
    ins.add_argument("model")
    _common(ins)
    sub.add_parser("ops", help="print every ONNX operator and whether the export differentiates it "
                               "(docs/operators.md)")
    demo = sub.add_parser("example", help="export the ResNet-50 graph bundled with the onnx package and "
                                          "print what was done")
    demo.add_argument("-o", "--out", default="sise-example", help="output folder (default ./sise-example)")
    return parser


def cmd_export(args) -> int:
    result = export_file(args.model, args.out, blocks=args.blocks, score=args.score,
                         input_shape=args.input_shape, output=args.output, layout=args.layout,
                         keep_batch=args.keep_batch, task=args.task, head=args.head,
                         extra_inputs=_extra_values(args))
    c = result.contract
    what = (f"detector: head {_head_text(c.head)}" if c.detector
            else f"score={c.score}, {c.num_classes} classes")
    print(f"wrote {args.out} in {result.seconds:.2f} s: {len(c.blocks)} blocks, "
          f"{sum(b.channels for b in c.blocks)} feature maps, {what}")
    for b in c.blocks:
        print(f"  {b.act_output:<12} {b.grad_output:<13} {b.tensor}  {list(b.shape[1:])}")
    for name, extra in c.extra_inputs.items():
        value = json.dumps(extra["value"])
        value = value if len(value) <= 80 else value[:77] + "..."
        print(f"  input {name} {extra['shape']} written into the graph as {value}")
    return 0


def _extra_values(args) -> dict:
    values = dict(parse_value(text) for text in args.extra_input)
    if len(values) != len(args.extra_input):
        raise ExportError("--extra-input names one input twice; give each input once")
    return values


def cmd_inspect(args) -> int:
    model = load_model(args.model)
    existing = C.read_contract(model)
    if existing is not None:
        what = (f"detector, head {_head_text(existing.head)}" if existing.detector
                else f"score={existing.score}")
        print(f"{args.model} is already exported (contract v{existing.version}, {what}):")
        for b in existing.blocks:
            print(f"  block {b.index}: {b.tensor}  {list(b.shape[1:])}")
        return 0
    values = _extra_values(args)
    image = None
    for vi in other_inputs(model):
        dims = dims_of(vi)
        if vi.name in values:
            given = json.dumps(values[vi.name])
            print(f"input  {vi.name} {dims}: not the image; --extra-input gives it {given}")
        elif len(dims) == 4 and image is None:
            image = vi.name
        else:
            print(f"input  {vi.name} {dims}: not the image; the export needs its value: "
                  f"--extra-input {vi.name}=VALUE (inspector config: export.extra_inputs)")
            values[vi.name] = 0  # read with zeros here: the analysis needs shapes, not values
    try:
        bake(model, values)
        a = analyse(model, blocks=args.blocks, input_shape=args.input_shape, output=args.output,
                    layout=args.layout, task=args.task, head=args.head)
    except ExportError as e:
        raise type(e)(f"{args.model}: {e}") from e
    io = a.io
    print(f"input  {io.input_name} {list(io.input_dims)} layout {io.layout}; output {io.output_name} "
          f"({io.num_classes} classes); opset {a.index.opset}")
    if a.head is not None:
        print(f"detector head: {_head_text(a.head)}")
    print(f"blocks ({len(a.blocks)}, {sum(a.index.shape(t)[1] for t in a.blocks)} feature maps):")
    for i, t in enumerate(a.blocks):
        shape = a.index.shape(t)
        producer = a.index.nodes[a.index.producer[t]].op_type if t in a.index.producer else "input"
        print(f"  {i}: {t}  C={shape[1]} {shape[2]}x{shape[3]}  (from {producer})")
    _, positions = gradient_path(a.index, a.blocks, io.output_name)
    counts = Counter(a.index.nodes[p].op_type for p in positions)
    missing = {a.index.nodes[p].op_type for p in positions if lookup(a.index.nodes[p]) is None}
    print(f"ops on the gradient path ({len(positions)} nodes):")
    for op, n in sorted(counts.items()):
        print(f"  {op:<22} {n:>4}  {'UNSUPPORTED' if op in missing else 'ok'}")
    return 1 if missing else 0


def cmd_ops(args) -> int:
    from .op_support import markdown

    print(markdown(), end="")
    return 0


def cmd_example(args) -> int:
    import onnx  # the bundled example ships inside the onnx wheel

    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                       "light_resnet50.onnx")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "resnet50.sise.onnx")
    print(f"example: {src} (ResNet-50 graph, constant weights, ends in Softmax -> --score identity)")
    args = argparse.Namespace(model=src, out=out, blocks="auto", score="identity", input_shape=None,
                              output=None, layout=None, keep_batch=False, task="classify", head="auto",
                              extra_input=[])
    return cmd_export(args)


def _head_text(head) -> str:
    """A detector head in one line: convention, anchors, classes, box encoding, where the sigmoid is."""
    return (f"{head.convention} ({', '.join(head.parts or head.tensors)}), {head.num_anchors} anchors, "
            f"{head.num_classes} "
            f"classes, boxes {head.box_encoding}{' + grid decoding' if head.strides else ''}"
            f"{f', {head.bins} bins a side' if head.bins else ''}, "
            f"{'logits (sigmoid applied by the export)' if head.logits else 'probabilities'}")


def _message(e: Exception) -> str:
    """One line for any exception: the export step's own errors as they are, others with their type."""
    if isinstance(e, ExportError):
        text = str(e)
    elif isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        detail = f": {e}" if str(e) else ""
        text = (f"unexpected {type(e).__name__}{detail}; "
                "rerun with --debug before the command for the traceback")
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {"export": cmd_export, "inspect": cmd_inspect, "example": cmd_example, "ops": cmd_ops}
    handler = handlers[args.command]
    try:
        return handler(args)
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
