"""Why ReLU-type VJPs are written g * Cast(y > 0) and not Where(y > 0, g, 0): times both on the CPU
provider for a [8, 256, 56, 56] tensor (a ResNet-50 stage-1 activation at batch 8), interleaved.

    python benchmarks/relu_mask.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPE = [8, 256, 56, 56]


def session(nodes):
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE) for n in ("y", "g")]
    graph = helper.make_graph(nodes, "mask", io,
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, SHAPE)], [zero])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    variants = {
        "Where(y > 0, g, 0)": session([helper.make_node("Greater", ["y", "zero"], ["c"]),
                                       helper.make_node("Where", ["c", "g", "zero"], ["o"])]),
        "g * Cast(y > 0)": session([helper.make_node("Greater", ["y", "zero"], ["c"]),
                                    helper.make_node("Cast", ["c"], ["m"], to=TensorProto.FLOAT),
                                    helper.make_node("Mul", ["g", "m"], ["o"])]),
    }
    rng = np.random.default_rng(0)
    feeds = {"y": np.maximum(rng.standard_normal(SHAPE), 0).astype(np.float32),
             "g": rng.standard_normal(SHAPE).astype(np.float32)}
    times = {k: [] for k in variants}
    for s in variants.values():
        s.run(None, feeds)
    for _ in range(15):
        for name, s in variants.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<20} {v:7.2f} ms")
    print(f"Where / Cast+Mul: {med['Where(y > 0, g, 0)'] / med['g * Cast(y > 0)']:.2f}x "
          f"(onnxruntime {ort.__version__}, CPU provider)")


if __name__ == "__main__":
    main()
