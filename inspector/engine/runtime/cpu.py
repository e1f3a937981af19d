"""What this CPU offers the int8 sampler (``inspector doctor``): its int8 dot-product instructions, and a
timed probe of onnxruntime's float32 and int8 kernels on the same small convolutional network."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

# /proc/cpuinfo flag -> name; onnxruntime's integer kernels pick the best of these at run time
INT8_FLAGS = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
              "asimddp": "Arm dot product", "i8mm": "Arm I8MM"}


def int8_instructions(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The int8 dot-product instruction sets the CPU reports; None where that cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    return [name for flag, name in INT8_FLAGS.items() if flag in flags]


def probe_network(width: int = 64, size: int = 56) -> onnx.ModelProto:
    """Four 3x3 convolutions with ReLU at ``width`` channels on ``size`` x ``size`` (seeded weights)."""
    rng = np.random.default_rng(0)
    nodes, inits, x, cin = [], [], "x", 3
    for i in range(4):
        w = (rng.standard_normal((width, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        bias = np.zeros(width, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", width
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             ["N", 3, size, size])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def forward_ms(model: onnx.ModelProto, x: np.ndarray, repeats: int = 5) -> float:
    """Median milliseconds per sample of ``model`` on ``x`` [N, ...] (CPU provider, integer kernels on)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / len(x)


def int8_probe(batch: int = 16) -> tuple[float, float]:
    """(float32, int8) milliseconds per sample of :func:`probe_network`, quantized as the sampler is."""
    from .int8 import quantize

    model = probe_network()
    x = np.random.default_rng(1).standard_normal((batch, 3, 56, 56)).astype(np.float32)
    return forward_ms(model, x), forward_ms(quantize(model, x), x)
