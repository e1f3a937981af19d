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
    os.path.join(ROOT, "inspector", "example", "config.yaml")]


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
])
def test_what_the_loader_refuses_the_schema_refuses(raw):
    with pytest.raises(ConfigError):
        config_from_dict(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, json_schema())
