"""The export passes as objects: requires -> call -> ensures, order rules as checks, modified flags, and
the export unchanged by running its passes through the PassManager."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_tools
from onnx_tools import contract as C
from onnx_tools import sampler
from onnx_tools.errors import AlignmentError, ExportError, ModelInputError, PassConditionError
from onnx_tools.export import analyse
from onnx_tools.graph import check_aligned, taken_names
from onnx_tools.passes import (
    AddGradients,
    ExportState,
    ExposeBlocks,
    Pass,
    PassManager,
    PassResult,
    add_gradients,
    expose_blocks,
    run_passes,
)
from onnx_tools.scores import emit_score, score_op

from .conftest import run_model
from .test_cli import small_cnn


def prepared(model: onnx.ModelProto | None = None, score: str = "softmax"):
    """(model to rewrite, shared state, the two passes) as export_model sets them up."""
    a = analyse(model or small_cnn())
    state = ExportState(index=a.index, blocks=tuple(a.blocks), batch_dim=a.io.input_dims[0])
    grads = AddGradients(logits=a.io.output_name, num_classes=a.io.num_classes, score=score)
    return a.model, state, grads, ExposeBlocks()


def test_expose_blocks_before_add_gradients_is_a_clear_error_and_changes_nothing():
    model, state, _, expose = prepared()
    before = model.SerializeToString()
    with pytest.raises(PassConditionError) as err:
        expose(model, state)
    msg = str(err.value)
    assert "export pass 'expose_blocks'" in msg and "precondition not met" in msg
    assert "sise/grad/0" in msg and "runs after add_gradients" in msg
    assert isinstance(err.value, ExportError)
    assert model.SerializeToString() == before  # requires runs before call


def test_the_manager_checks_the_order_too():
    model, state, grads, expose = prepared()
    with pytest.raises(PassConditionError, match="'expose_blocks'.*runs after add_gradients"):
        PassManager([expose, grads])(model, state)
    with pytest.raises(PassConditionError, match="'expose_blocks'"):
        expose_blocks(model, state.index, list(state.blocks), state.batch_dim)  # the old function checks it


def test_add_gradients_after_expose_blocks_finds_no_block_tensors():
    model, state, grads, expose = prepared()
    run_passes(model, state, [grads, expose])
    again = AddGradients(logits=grads.logits, num_classes=grads.num_classes, score="softmax")
    with pytest.raises(PassConditionError, match="'add_gradients': precondition not met: the block tensors"):
        again(model, state)


def test_add_gradients_twice_is_refused():
    model, state, grads, _ = prepared()
    grads(model, state)
    with pytest.raises(PassConditionError, match="already has the input 'sise_target'"):
        grads(model, state)


def test_positions_must_line_up_with_the_analysis_copy():
    model, state, grads, _ = prepared()
    check_aligned(model, state.index)  # what analyse leaves
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["x_copy"]))
    with pytest.raises(AlignmentError, match="analysis copy has 8 nodes but the model has 9"):
        check_aligned(model, state.index)
    with pytest.raises(PassConditionError, match="'add_gradients': precondition not met: .*9"):
        grads(model, state)
    del model.graph.node[0]
    model.graph.node[1].op_type = "Sigmoid"  # the Relu after the first Conv
    with pytest.raises(AlignmentError, match=r"node 1 is Sigmoid -> \['r1'\] in the model but Relu"):
        check_aligned(model, state.index)
    with pytest.raises(AlignmentError, match="node 1 is Sigmoid"):
        check_aligned(model, state.index, [1])
    check_aligned(model, state.index, [0, 2])  # only the positions used are compared


def test_a_folded_node_is_still_aligned():
    """fold_constants turns a constant subgraph into a Constant at the same position."""
    m = small_cnn()
    negative = helper.make_node("Constant", [], ["negative"], value=onnx.numpy_helper.from_array(
        np.array([-1, -4], np.int64)))
    shape = helper.make_node("Neg", ["negative"], ["shape"])  # folded to a Constant in the copy
    flat = next(n for n in m.graph.node if n.op_type == "Flatten")
    flat.op_type, flat.input[:] = "Reshape", ["g", "shape"]
    del flat.attribute[:]
    m.graph.node.insert(0, shape)
    m.graph.node.insert(0, negative)
    a = analyse(m)
    assert a.index.nodes[1].op_type == "Constant" and a.model.graph.node[1].op_type == "Neg"
    check_aligned(a.model, a.index)
    assert onnx_tools.export_model(m).passes == {"add_gradients": True, "expose_blocks": True}


class Noop(Pass):
    name = "noop"

    def call(self, model, state):
        return PassResult(model=model, modified=False)


class Forgetful(AddGradients):
    """Claims the gradient outputs but adds nothing: its postcondition must catch it."""

    name = "forgetful"

    def call(self, model, state):
        return PassResult(model=model, modified=False)


def test_ensures_is_checked_after_call():
    model, state, grads, _ = prepared()
    forgetful = Forgetful(logits=grads.logits, num_classes=grads.num_classes, score="softmax")
    with pytest.raises(PassConditionError, match="'forgetful': postcondition not met: the graph input "
                                                 "'sise_target'"):
        forgetful(model, state)


def test_modified_flags_are_recorded():
    model, state, grads, expose = prepared()
    run = PassManager([Noop(), grads, expose])(model, state)
    assert run.modified_by == {"noop": False, "add_gradients": True, "expose_blocks": True}
    assert run.modified and run.model is model
    assert run.results["add_gradients"].outputs == ("sise/grad/0", "sise/grad/1")
    assert run.results["expose_blocks"].outputs == ("sise/act/0", "sise/range/0",
                                                    "sise/act/1", "sise/range/1")
    assert not PassManager([Noop()])(model, state).modified
    with pytest.raises(ValueError, match="unique"):
        PassManager([Noop(), Noop()])
    result = onnx_tools.export_model(small_cnn())
    assert result.passes == {"add_gradients": True, "expose_blocks": True}


@pytest.mark.parametrize("score", C.SCORE_KINDS)
def test_export_is_deterministic_and_the_wrappers_build_the_same_model(score):
    first = onnx_tools.export_model(small_cnn(), score=score)
    second = onnx_tools.export_model(small_cnn(), score=score)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    # the old function API (thin wrappers over the pass objects, no re-batching) gives the same bytes
    first = onnx_tools.export_model(small_cnn(), score=score, keep_batch=True)
    a = analyse(small_cnn())
    grads = add_gradients(a.model, a.index, blocks=a.blocks, logits=a.io.output_name,
                          num_classes=a.io.num_classes, score=score, batch_dim=a.io.input_dims[0])
    exposed = expose_blocks(a.model, a.index, a.blocks, a.io.input_dims[0])
    assert grads == ["sise/grad/0", "sise/grad/1"]
    assert exposed == [("sise/act/0", "sise/range/0"), ("sise/act/1", "sise/range/1")]
    C.write_contract(a.model, first.contract)
    assert a.model.SerializeToString() == first.model.SerializeToString()


def test_the_contract_names_what_the_passes_ensured():
    result = onnx_tools.export_model(small_cnn(x_dims=("N", 3, 16, 16)))
    c = result.contract
    outputs = {o.name for o in result.model.graph.output}
    assert [b.tensor for b in c.blocks] == ["r1", "r2"]
    for b in c.blocks:
        assert {b.act_output, b.grad_output, b.range_output} <= outputs
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    outs = run_model(result.model, {"x": x, c.target_input: np.eye(5, dtype=np.float32)[:2]})
    assert outs["sise/act/1"].shape == (2, 4, 8, 8) and outs["sise/grad/1"].shape == (2, 4)
    assert np.allclose(outs["sise/range/0"], np.ptp(outs["sise/act/0"], axis=(2, 3)))


def test_one_source_for_score_kinds_and_taken_names():
    assert onnx_tools.SCORE_KINDS == C.SCORE_KINDS == tuple(C.SCORE_OPS)
    assert [score_op(k) for k in C.SCORE_KINDS] == ["Softmax", "Sigmoid", None, None]
    with pytest.raises(ModelInputError, match="score kind 'tanh' is not one of softmax, sigmoid"):
        emit_score(None, "logits", "tanh")
    m = small_cnn()
    assert {"x", "w", "w2", "fc", "c1", "logits"} <= taken_names(m) and "" not in taken_names(m)


def test_public_names():
    for name in onnx_tools.__all__:
        assert hasattr(onnx_tools, name), name
    for name in ("IMAGE", "KEEP", "LAYER_MAPS", "MASKS", "SCORES", "TARGET", "act_input", "idx_input",
                 "upsample_matrix"):
        assert getattr(onnx_tools, name) is getattr(sampler, name)
