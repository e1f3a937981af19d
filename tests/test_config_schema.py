"""The config's JSON Schema: generated from the dataclasses, committed for editors, up to date, and it
accepts every example config and rejects what the loader rejects for types and choices."""

from __future__ import annotations

import glob
import json
import os

import jsonschema
import pytest
import yaml

from inspector.config import ConfigError, config_from_dict, json_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_FILE = os.path.join(ROOT, "configs", "inspector-config.schema.json")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))) + [
    os.path.join(ROOT, "inspector", "example", "config.yaml"),
    os.path.join(ROOT, "inspector", "example", "detector", "config.yaml")]


def test_the_committed_schema_is_the_generated_one():
    with open(SCHEMA_FILE) as f:
        committed = json.load(f)
    assert committed == json_schema(), "inspector schema > configs/inspector-config.schema.json"
    jsonschema.Draft202012Validator.check_schema(committed)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_example_configs_follow_the_schema(path):
    with open(path) as f:
        raw = yaml.safe_load(f)
    jsonschema.validate(raw, json_schema())
    config_from_dict(raw)  # and the loader agrees


@pytest.mark.parametrize("raw", [
    {"model": "m.onnx", "preprocess": {"resize": "crop"}},
    {"model": "m.onnx", "method": {"preset": "turbo"}},
    {"model": "m.onnx", "export": {"score": "tanh"}},
    {"model": "m.onnx", "regions": {"threshold": "mean"}},
    {"model": "m.onnx", "outputs": {"overlay": "gif"}},
    {"model": "m.onnx", "preprocess": {"size": [224]}},
    {"model": "m.onnx", "colour": "red"},
    {"preprocess": {}},
    {"model": "m.onnx", "runtime": {"fp16": "yes"}},
    {"model": "m.onnx", "preprocess": {"letterbox_fill": "white"}},
    {"model": "m.onnx", "preprocess": {"gray": "average"}},
])
def test_what_the_loader_refuses_the_schema_refuses(raw):
    with pytest.raises(ConfigError):
        config_from_dict(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, json_schema())


def test_a_key_that_takes_a_word_or_a_number_takes_both():
    for value in ("mean", 255, 127.5):
        assert config_from_dict({"model": "m.onnx", "preprocess": {"letterbox_fill": value}}) \
            .preprocess.letterbox_fill == value
        jsonschema.validate({"model": "m.onnx", "preprocess": {"letterbox_fill": value}}, json_schema())
    with pytest.raises(ConfigError, match=r"preprocess.letterbox_fill: expected one of mean or a number, "
                                          r"got 'white'"):
        config_from_dict({"model": "m.onnx", "preprocess": {"letterbox_fill": "white"}})


@pytest.mark.parametrize("raw, shown", [
    ({"visuals": {"good_opacity": 1.0000001}}, "visuals.good_opacity: must be in [0, 1], got 1.0000001"),
    ({"method": {"rise": {"p": 1.0000001}}}, "method.rise.p: must be in (0, 1], got 1.0000001"),
    ({"regions": {"threshold": "percentile", "value": 100.0000001}}, "got 100.0000001"),
    ({"preprocess": {"scale": -1e-300}}, "preprocess.scale: must be > 0, got -1e-300"),
])
def test_an_out_of_range_value_is_shown_as_given(raw, shown):
    # a value just outside its range must not be printed rounded into it ("must be in [0, 1], got 1")
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": "m.onnx", **raw})
    assert shown in str(err.value)
