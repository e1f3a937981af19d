"""Models whose weights live in external data files (PyTorch's default export: model.onnx +
model.onnx.data): exported as shipped, written the same way, explained by the engine from the file
without a second copy, and refused in one line where the data is missing, truncated or outside the
model's folder."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnx_tools import export_file, read_contract
from onnx_tools.errors import ExportError, ModelLoadError
from onnx_tools.graph import load_model

from .test_engine import check_against_reference, inspector_for, smooth_image
from .test_model_coverage import check_against_torch

SHAPE = (1, 3, 32, 32)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, 1, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


@pytest.fixture(scope="module")
def dynamo_split(tmp_path_factory):
    """PyTorch's default exporter (dynamo) as it writes a model: model.onnx and model.onnx.data."""
    folder = tmp_path_factory.mktemp("dynamo")
    model = net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*SHAPE),), str(folder / "model.onnx"), verbose=False)
    assert (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size
    return model, folder / "model.onnx"


def test_pytorchs_default_export_is_exported_as_shipped_and_written_split(dynamo_split, tmp_path):
    model, path = dynamo_split
    result = check_against_torch(model, load_model(path), SHAPE, ["1", "4"])
    assert result.contract.input_shape[0] == "N"  # dynamo's Reshape(allowzero=1) [1, 16] freed too
    out = tmp_path / "model.sise.onnx"
    export_file(path, out)
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 2 and written[0] == "model.sise.onnx", written
    data = tmp_path / written[1]
    assert data.stat().st_size > 16 * 16 * 9 * 4 and out.stat().st_size < data.stat().st_size
    plain = onnx.load(out, load_external_data=False)
    assert {e.value for t in plain.graph.initializer for e in t.external_data if e.key == "location"} == \
        {written[1]}
    assert read_contract(plain) is not None


def test_the_engine_explains_a_split_model_as_the_torch_sise_and_as_the_same_model_in_one_file(
        dynamo_split, tmp_path):
    model, path = dynamo_split
    split = tmp_path / "split" / "model.sise.onnx"
    split.parent.mkdir()
    export_file(path, split)
    whole = tmp_path / "whole.sise.onnx"
    onnx.save(load_model(split), whole)  # the same exported model, weights embedded
    image = smooth_image(SHAPE)
    exp, counts = check_against_reference(model, ["1", "4"], str(split), image)
    assert sum(counts) > 4
    insp = inspector_for(str(whole))
    assert np.array_equal(insp.explain(image).saliency, exp.saliency)
    split_insp = inspector_for(str(split))
    assert split_insp.model.weights_folder == str(split.parent)  # sessions read the data file itself
    assert split_insp.model.sha256 != insp.model.sha256


def test_the_plain_split_model_is_exported_on_the_fly_and_its_weights_are_part_of_its_identity(
        dynamo_split, tmp_path):
    _, source = dynamo_split
    shutil.copy(source, tmp_path / "model.onnx")
    shutil.copy(str(source) + ".data", tmp_path / "model.onnx.data")
    first = inspector_for(str(tmp_path / "model.onnx"))
    image = smooth_image(SHAPE)
    before = first.explain(image)
    # new weights in the data file, the .onnx file unchanged: another model, another export, another hash
    data = bytearray((tmp_path / "model.onnx.data").read_bytes())
    weights = np.frombuffer(data, np.float32).copy()
    (tmp_path / "model.onnx.data").write_bytes((weights * 1.5).astype(np.float32).tobytes())
    second = inspector_for(str(tmp_path / "model.onnx"))
    assert second.model.path != first.model.path and second.model.sha256 != first.model.sha256
    assert not np.allclose(second.explain(image).scores, before.scores)


def test_re_exporting_to_the_same_path_leaves_one_data_file(dynamo_split, tmp_path):
    _, path = dynamo_split
    out = tmp_path / "m.sise.onnx"
    export_file(path, out)
    export_file(path, out, score="logit")  # other gradients: other data
    assert len(os.listdir(tmp_path)) == 2
    export_file(path, out)
    assert len(os.listdir(tmp_path)) == 2
    load_model(out)


def _saved(tmp_path, location: str) -> str:
    model = onnx.load(str(_plain(tmp_path)))
    path = tmp_path / "a" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    target = (path.parent / location)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    if location != "w.bin":
        os.replace(path.parent / "w.bin", target)
        m = onnx.load(path, load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save(m, path)
    return str(path)


def _plain(tmp_path):
    path = tmp_path / "plain.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net(), (torch.randn(*SHAPE),), str(path), dynamo=False, input_names=["image"],
                              output_names=["logits"])
    return path


def test_data_in_a_subfolder_is_read(tmp_path):
    path = _saved(tmp_path, "weights/w.bin")
    out = tmp_path / "o.sise.onnx"
    export_file(path, out)
    assert len(os.listdir(tmp_path)) == 4  # plain.onnx, a/, o.sise.onnx and its data


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"),
    ("truncated", "truncated"),
    ("outside", "'..'"),
    ("absolute", "does not allow"),
])
def test_unreadable_external_data_is_refused_naming_the_tensor_and_file(tmp_path, case, expect):
    path = _saved(tmp_path, "w.bin")
    data = os.path.join(os.path.dirname(path), "w.bin")
    if case == "missing":
        os.unlink(data)
    elif case == "truncated":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) - 4)
    else:
        m = onnx.load(path, load_external_data=False)
        where = "../w.bin" if case == "outside" else os.path.abspath(data)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = where
        onnx.save(m, path)
    with pytest.raises(ModelLoadError) as e:
        export_file(path, tmp_path / "o.sise.onnx")
    message = str(e.value)
    assert expect in message and path in message and "tensor '" in message and "\n" not in message, message
    assert not (tmp_path / "o.sise.onnx").exists()


def test_the_inputs_data_files_are_never_written_over_or_removed(dynamo_split, tmp_path):
    """-o naming the input's own data file is refused; an input whose data file is named like an earlier
    export's (<out>.<12 hex>.data) keeps it; a one-file export removes the data file of a split export
    it replaces."""
    _, source = dynamo_split
    shutil.copy(source, tmp_path / "model.onnx")
    shutil.copy(str(source) + ".data", tmp_path / "model.onnx.data")
    before = (tmp_path / "model.onnx.data").read_bytes()
    with pytest.raises(ExportError, match="is a data file of the input model"):
        export_file(tmp_path / "model.onnx", tmp_path / "model.onnx.data")
    assert (tmp_path / "model.onnx.data").read_bytes() == before
    # the input's weights in a file named as an export to out.onnx would name its data
    m = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "out.onnx.0123456789ab.data"
    onnx.save(m, tmp_path / "renamed.onnx")
    os.replace(tmp_path / "model.onnx.data", tmp_path / "out.onnx.0123456789ab.data")
    export_file(tmp_path / "renamed.onnx", tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.0123456789ab.data").read_bytes() == before
    load_model(tmp_path / "renamed.onnx")
    # a one-file model exported to the same path: the split export's data file goes
    plain = tmp_path / "plain.onnx"
    onnx.save(load_model(tmp_path / "renamed.onnx"), plain)
    split_data = [f for f in os.listdir(tmp_path)
                  if f.startswith("out.onnx.") and f != "out.onnx.0123456789ab.data"]
    assert len(split_data) == 1
    export_file(plain, tmp_path / "out.onnx")  # ...written split only when its input was
    assert not (tmp_path / split_data[0]).exists() and (tmp_path / "out.onnx.0123456789ab.data").exists()


def test_external_data_inside_a_subgraph_is_read(tmp_path):
    """A Constant inside an If branch whose tensor is kept in an external file (valid ONNX)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    rng = np.random.default_rng(0)
    bias = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    branch_const = numpy_helper.from_array(np.zeros((1, 8, 1, 1), np.float32), "b")
    (tmp_path / "branch.data").write_bytes(bias.tobytes())
    set_external_data(branch_const, "branch.data", 0, bias.nbytes)
    branch_const.ClearField("raw_data")
    branch_const.data_location = TensorProto.EXTERNAL
    then = helper.make_graph([helper.make_node("Constant", [], ["tb"], value=branch_const)], "then", [],
                             [helper.make_tensor_value_info("tb", TensorProto.FLOAT, [1, 8, 1, 1])])
    other = helper.make_graph([helper.make_node("Constant", [], ["eb"], value=numpy_helper.from_array(
        np.zeros((1, 8, 1, 1), np.float32)))], "else", [],
        [helper.make_tensor_value_info("eb", TensorProto.FLOAT, [1, 8, 1, 1])])
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "fc")
    flag = numpy_helper.from_array(np.array(True), "flag")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["flag"], ["bias"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["c", "bias"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                         ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [w, fc, flag])
    path = tmp_path / "model.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.write_bytes(model.SerializeToString())
    export_file(path, tmp_path / "out.sise.onnx")
    import onnxruntime as ort

    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    original = session.run(["logits"], {"image": x})
    exported = onnx.load(tmp_path / "out.sise.onnx")
    c = read_contract(exported)
    got = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [c.output_name], {"image": x, c.target_input: np.zeros((1, 5), np.float32)})
    assert np.array_equal(got[0], original[0])
