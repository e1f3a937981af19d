from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def run_model(model, feeds: dict, *, optimize: bool = True, level: str | None = None, outputs=None) -> dict:
    """Run an in-memory ONNX model on the CPU provider; returns {output name: array}.

    ``level`` (disable | basic | extended | all) overrides ``optimize`` (all / disable).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level or ("all" if optimize else "disable")]
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e| (scale-free; 0 for an exact match)."""
    scale = float(np.max(np.abs(expected)))
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / (scale if scale > 0 else 1.0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch model, taps, input shape, exported model path) of a fixture model (needs torch)."""
    import onnx

    from onnx_tools import export_model

    from .models import export_onnx, fixture

    cache = {}

    def get(name):
        if name not in cache:
            model, taps, shape = fixture(name)
            path = tmp_path_factory.mktemp(name) / f"{name}.sise.onnx"
            onnx.save(export_model(export_onnx(model, shape)).model, path)
            cache[name] = (model, taps, shape, str(path))
        return cache[name]
    return get


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the whole session (see tests/postgres.py)."""
    from .postgres import postgres_server as server

    with server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty results store URL on each backend."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "results.db")
    from .postgres import new_database

    return new_database(request.getfixturevalue("postgres_server"))
