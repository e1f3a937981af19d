"""Models with inputs besides the image (the image and a small vector joined before the head): each
other input gets one constant value, written into the exported graph and repeated over the batch; an
input without one is refused naming it, the option and the config key."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn

from inspector import Inspector
from inspector.errors import ModelContractError
from onnx_tools import export_model
from onnx_tools.errors import ModelInputError

from .sise_reference import sise_reference
from .test_engine import CPU, IDENTITY_PREPROCESS, pearson, smooth_image
from .test_model_coverage import check_against_torch

SHAPE = (1, 3, 24, 24)
META = [0.5, -1.0, 2.0, 0.25]


class TwoInputs(nn.Module):
    """conv -> relu (block) -> pool -> conv -> relu (block) -> mean, joined with a 4-vector -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU()
        self.pool, self.meta, self.fc = nn.MaxPool2d(2), nn.Linear(4, 6), nn.Linear(14, 5)

    def forward(self, x, meta):
        features = self.r2(self.c2(self.pool(self.r1(self.c1(x))))).mean((2, 3))
        return self.fc(torch.cat([features, torch.relu(self.meta(meta))], 1))


class WithConstant(nn.Module):
    """The reference: the model with the vector fixed, as the export writes it."""

    def __init__(self, inner: TwoInputs, meta):
        super().__init__()
        self.inner = inner
        self.register_buffer("value", torch.tensor(meta, dtype=torch.float32))

    def forward(self, x):
        return self.inner(x, self.value.expand(len(x), -1))


def exported(dynamic: bool = True) -> tuple[TwoInputs, onnx.ModelProto]:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    f = io.BytesIO()
    axes = {"image": {0: "N"}, "meta": {0: "N"}, "logits": {0: "N"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*SHAPE), torch.randn(1, 4)), f, dynamo=False, opset_version=17,
                          input_names=["image", "meta"], output_names=["logits"], dynamic_axes=axes)
    return model, onnx.load_from_string(f.getvalue())


def test_an_input_without_a_value_is_refused_naming_it_the_option_and_the_config_key():
    _, model = exported()
    with pytest.raises(ModelInputError) as e:
        export_model(model)
    message = str(e.value)
    assert "input 'meta'" in message and "--extra-input meta=" in message
    assert "export.extra_inputs" in message and "\n" not in message


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_value_is_written_into_the_graph_and_the_gradients_match_torch(dynamic):
    model, onnx_model = exported(dynamic)
    taps = ["inner.r1", "inner.r2"]
    result = check_against_torch(WithConstant(model, META), onnx_model, SHAPE, taps,
                                 extra_inputs={"meta": META})
    c = result.contract
    assert c.input_shape[0] == "N"  # a batch of masked images runs as single images do
    assert c.extra_inputs["meta"]["value"] == pytest.approx(META)
    assert [vi.name for vi in result.model.graph.input] == ["image", c.target_input]


@pytest.mark.parametrize("value, expect", [
    ([1.0, 2.0], "needs a value of shape [4]"),
    ("abc", "must be a number or a list of numbers"),
    ([1.0, None, 2.0, 3.0], "must be a number or a list of numbers"),
    ([True, False, True, False], "must be a number or a list of numbers"),
    (["1", "2", "3", "4"], "must be a number or a list of numbers"),
    ([1.0, float("nan"), 2.0, 3.0], "not finite"),
    ([1e400, 1.0, 2.0, 3.0], "not finite"),
    ([1e39, 1.0, 2.0, 3.0], "too large for a float32 input"),
    ([[1.0, 2.0], [3.0]], "not a rectangular list"),
])
def test_a_value_of_the_wrong_shape_or_type_is_refused(value, expect):
    _, model = exported()
    with pytest.raises(ModelInputError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        export_model(model, extra_inputs={"meta": value})


@pytest.mark.parametrize("value, expect", [(3.7, "must be whole numbers"), (1e30, "must be whole numbers"),
                                           (2, None), (-1, None)])
def test_an_integer_input_takes_whole_numbers_in_its_range(value, expect):
    """An index input (int64 [N, 1]) used by a Gather of the class scores' neighbours."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])
    index = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w = numpy_helper.from_array(weights, "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["m", "f"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [image, index], [out], [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    if expect is None:
        result = export_model(model, extra_inputs={"idx": value})
        assert result.contract.extra_inputs["idx"] == {"shape": ["N", 1], "dtype": "int64", "value": [value]}
    else:
        with pytest.raises(ModelInputError, match=expect):
            export_model(model, extra_inputs={"idx": value})


def test_the_image_cannot_take_a_value():
    _, model = exported()
    with pytest.raises(ModelInputError, match="input 'image' is the image input: it cannot take a constant"):
        export_model(model, extra_inputs={"image": 0.5, "meta": META})


def test_a_name_that_is_not_an_input_is_refused_listing_the_inputs():
    _, model = exported()
    with pytest.raises(ModelInputError, match=r"'metadata'.*its inputs: \['image', 'meta'\]"):
        export_model(model, extra_inputs={"meta": META, "metadata": 1})


def test_a_scalar_fills_the_input():
    _, model = exported()
    result = export_model(model, extra_inputs={"meta": 0.5})
    assert result.contract.extra_inputs["meta"]["value"] == [0.5] * 4


def test_the_engine_explains_with_the_configs_value_as_the_torch_sise(tmp_path):
    model, onnx_model = exported()
    path = tmp_path / "two.onnx"
    onnx.save(onnx_model, path)
    insp = Inspector.from_options(model=str(path), preprocess=IDENTITY_PREPROCESS, runtime=CPU,
                                  export={"extra_inputs": {"meta": META}})
    image = smooth_image(SHAPE)
    exp = insp.explain(image)
    reference = WithConstant(model, META)
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    _, fused, counts = sise_reference(reference, ["inner.r1", "inner.r2"], x, exp.target,
                                         mu=insp.method.mu, adaptive=insp.method.adaptive,
                                         cap=insp.method.max_masks_per_layer)
    assert list(exp.masks_per_layer) == counts and sum(counts) > 4
    assert pearson(exp.saliency, fused) >= 0.99
    # another value is another export; the exported model refuses a config that disagrees with it
    other = Inspector.from_options(model=str(path), preprocess=IDENTITY_PREPROCESS, runtime=CPU,
                                   export={"extra_inputs": {"meta": [0.0] * 4}})
    assert other.model.path != insp.model.path
    with pytest.raises(ModelContractError, match=r"exported with input 'meta'.*export.extra_inputs.meta"):
        Inspector.from_options(model=insp.model.path, preprocess=IDENTITY_PREPROCESS, runtime=CPU,
                               export={"extra_inputs": {"meta": [0.0] * 4}})
    Inspector.from_options(model=insp.model.path, preprocess=IDENTITY_PREPROCESS, runtime=CPU,
                           export={"extra_inputs": {"meta": META}})  # the same value: accepted


def test_inspect_lists_the_other_inputs_and_export_takes_their_values(tmp_path):
    _, onnx_model = exported()
    path = tmp_path / "two.onnx"
    onnx.save(onnx_model, path)
    run = [sys.executable, "-m", "onnx_tools"]
    r = subprocess.run([*run, "inspect", str(path)], check=False, capture_output=True, text=True)
    assert "input  meta ['N', 4]: not the image; the export needs its value: --extra-input meta=" in r.stdout
    assert "blocks (2" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "two.sise.onnx"
    r = subprocess.run([*run, "export", str(path), "-o", str(out), "--extra-input",
                        f"meta={json.dumps(META)}"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"input meta ['N', 4] written into the graph as {json.dumps(META)}" in r.stdout
    r = subprocess.run([*run, "export", str(path), "-o", str(out), "--extra-input", "meta=[1,"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --extra-input 'meta=[1,'"), r.stderr
