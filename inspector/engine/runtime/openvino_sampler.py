"""The int8 sampler on OpenVINO's CPU runtime (``runtime.sampler_runtime``; the extra ``openvino``).

OpenVINO compiles the same sampler graph the CPU provider would run, int8 QDQ groups included, into its own
integer kernels; on a 2-core AVX512-VNNI/AMX machine it ran ResNet-50's int8 sampler 2.2 times as fast as
onnxruntime (benchmarks/int8_speed.py). Its inference precision is pinned to float32, so the graph's float
parts (masks, scores, sums) compute as written; OpenVINO would otherwise pick bfloat16 on CPUs that have it.
"""

from __future__ import annotations

import threading

import numpy as np

from ...errors import ConfigError


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import openvino

    return openvino.__version__


class OpenVinoSampler:
    """One compiled sampler graph and its infer request (runs are serialised: a request is not
    thread-safe)."""

    def __init__(self, sampler_bytes: bytes, *, threads: int = 0):
        try:
            import openvino as ov
        except ImportError as e:
            raise ConfigError("runtime.sampler_runtime: openvino needs the openvino package: pip install "
                              "-e '.[cpu,openvino]' (or set runtime.sampler_runtime: auto)") from e
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(model=sampler_bytes, weights=b""), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        with self._lock:
            result = self._request.infer(feeds)
            return [np.array(result[self.compiled.output(name)]) for name in outputs]
