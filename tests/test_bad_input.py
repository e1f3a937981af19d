"""Bad input on the inspector side: non-finite and out-of-range config numbers."""

from __future__ import annotations

import re

import pytest

from inspector import ConfigError, load_config
from inspector.config import config_from_dict


# ------------------------------------------------------------------------------------ config numbers
@pytest.mark.parametrize("section, values, key", [
    ("preprocess", {"mean": [0.5, float("nan"), 0.5]}, "preprocess.mean[1]"),
    ("preprocess", {"std": [float("inf")]}, "preprocess.std[0]"),
    ("preprocess", {"scale": float("nan")}, "preprocess.scale"),
    ("visuals", {"opacity": float("nan")}, "visuals.opacity"),
    ("roi", {"mask": "roi.png", "flag_below": float("nan")}, "roi.flag_below"),
    ("method", {"mu": float("inf")}, "method.mu"),
    ("method", {"rise_p": float("nan")}, "method.rise_p"),
    ("regions", {"value": float("-inf")}, "regions.value"),
    ("regions", {"threshold": "otsu", "value": float("nan")}, "regions.value"),  # unused but still a number
    ("preprocess", {"scale": 10 ** 400}, "preprocess.scale"),  # an int too large for a float
])
def test_non_finite_numbers_are_refused(section, values, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": must be a finite number"):
        config_from_dict({"model": "m.onnx", section: values})


def test_non_finite_message():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", "preprocess": {"mean": [float("nan"), 0.4, 0.4]}})
    assert str(e.value) == "preprocess.mean[0]: must be a finite number, got nan"


def test_yaml_nan_and_inf_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m.onnx\npreprocess:\n  std: [0.2, .inf, 0.2]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: preprocess\.std\[1\]: must be a finite number, got inf"):
        load_config(path)
    path.write_text("model: m.onnx\nvisuals:\n  opacity: .nan\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: visuals\.opacity: must be a finite number, got nan"):
        load_config(path)


@pytest.mark.parametrize("regions, allowed", [
    ({"threshold": "fixed", "value": 1.5}, r"\[0, 1\]"),
    ({"threshold": "fixed", "value": -0.1}, r"\[0, 1\]"),
    ({"threshold": "percentile", "value": 101}, r"\[0, 100\]"),
    ({"threshold": "percentile", "value": -1}, r"\[0, 100\]"),
])
def test_regions_value_out_of_range(regions, allowed):
    with pytest.raises(ConfigError, match=rf"^regions\.value: must be in {allowed} for regions\.threshold"):
        config_from_dict({"model": "m.onnx", "regions": regions})


def test_regions_value_in_range_and_otsu_ignores_it():
    assert config_from_dict({"model": "m.onnx", "regions": {"threshold": "percentile", "value": 99}}).regions.value == 99
    assert config_from_dict({"model": "m.onnx", "regions": {"threshold": "fixed", "value": 1}}).regions.value == 1
    assert config_from_dict({"model": "m.onnx", "regions": {"threshold": "otsu", "value": 7}}).regions.value == 7


@pytest.mark.parametrize("flag_below", [-0.01, 1.5])
def test_roi_flag_below_out_of_range(flag_below, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: m.onnx\nroi:\n  mask: roi.png\n  flag_below: {flag_below}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: roi\.flag_below: must be in \[0, 1\]"):
        load_config(path)
