"""Export-step figures: export time of a ResNet-50-size model, and the cost of one run of the rewritten
model (original outputs + block activations + gradients) relative to a plain forward pass, on the CPU
provider. Both runs are interleaved in one process so that machine noise hits them alike.

    python benchmarks/export_cost.py                 # torchvision-style ResNet-50 (needs torch, dev extra)
    python benchmarks/export_cost.py --model light   # the opset-9 ResNet-50 graph bundled with onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

from onnx_tools import export_model


def resnet50_from_torch() -> onnx.ModelProto:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import torch

    from tests.models import export_onnx, fixture

    model, _, shape = fixture("resnet50-full")
    with torch.no_grad():
        return export_onnx(model, shape)


def resnet50_light() -> onnx.ModelProto:
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_resnet50.onnx")
    return onnx.load(path)


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["torch", "light"], default="torch")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    source = resnet50_from_torch() if args.model == "torch" else resnet50_light()
    score = "softmax" if args.model == "torch" else "identity"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = export_model(source, score=score)
        times.append(time.perf_counter() - start)
    c = result.contract
    print(f"model: ResNet-50 ({args.model}), {len(source.graph.node)} nodes, opset "
          f"{source.opset_import[0].version}; {len(c.blocks)} blocks, "
          f"{sum(b.channels for b in c.blocks)} maps")
    print(f"export time: median {statistics.median(times):.2f} s of 3 (bar: < 10 s)")
    plain, rewritten = session(source, args.threads), session(result.model, args.threads)
    in_name = c.input_name
    print(f"onnxruntime {ort.__version__}, CPU provider, {args.threads} threads")
    print("batch | plain forward ms | rewritten run ms | ratio (bar: <= 3.0)")
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        if c.input_shape[0] != "N" and isinstance(c.input_shape[0], int) and c.input_shape[0] != batch:
            print(f"{batch:>5} | (model has a fixed batch of {c.input_shape[0]}; skipped)")
            continue
        target = np.zeros((batch, c.num_classes), np.float32)
        target[:, 1] = 1.0
        feeds_a, feeds_b = {in_name: x}, {in_name: x, c.target_input: target}
        plain.run(None, feeds_a)
        rewritten.run(None, feeds_b)
        ta, tb = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            plain.run(None, feeds_a)
            ta.append(time.perf_counter() - t)
            t = time.perf_counter()
            rewritten.run(None, feeds_b)
            tb.append(time.perf_counter() - t)
        a, b = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
        print(f"{batch:>5} | {a:16.1f} | {b:16.1f} | {b / a:.2f}")


if __name__ == "__main__":
    main()
