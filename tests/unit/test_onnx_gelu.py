"""`keras_nfnets.onnx_gelu`: the scaled tanh-GELU of an ONNX graph, as
TensorFlow and tf2onnx write it, rewritten in the form onnxruntime fuses;
the same values; anything that is not exactly that subgraph left alone.
The exported NFNet's case is in test_export.py
(`test_folded_tiny_nfnet_dynamic_batch[onnx]`)."""

import math

import numpy as np
import pytest

from keras_nfnets import onnx_gelu

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

SHAPE = [2, 3, 3, 3]  # square, so a transpose that does not cancel still adds


def _graph(cubic=0.044715, back_perm=(0, 3, 1, 2), gamma=1.7015043):
    """`gamma * gelu_tanh(x)` the way tf2onnx writes keras_nfnets' scaled
    GELU: gamma inside the `1 + tanh` term, the cube in another axis
    order between two transposes (`back_perm` undoes the first)."""
    consts = {"c3": 3.0, "cubic": cubic, "c_pi": math.sqrt(2 / math.pi),
              "one": 1.0, "half": 0.5, "gamma": gamma}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k)
             for k, v in consts.items()]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Pow", ["x_t", "c3"], ["cube"]),
        helper.make_node("Mul", ["cubic", "cube"], ["cube_s"]),
        helper.make_node("Transpose", ["cube_s"], ["cube_b"],
                         perm=list(back_perm)),
        helper.make_node("Add", ["x", "cube_b"], ["inner"]),
        helper.make_node("Mul", ["c_pi", "inner"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["tanh"]),
        helper.make_node("Add", ["one", "tanh"], ["one_plus"]),
        helper.make_node("Mul", ["half", "x"], ["half_x"]),
    ]
    if gamma is None:
        nodes.append(helper.make_node("Mul", ["half_x", "one_plus"], ["y"]))
    else:
        nodes += [helper.make_node("Mul", ["gamma", "one_plus"], ["g"]),
                  helper.make_node("Mul", ["half_x", "g"], ["y"])]
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def _run(model, x):
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32) * 3


@pytest.mark.parametrize("gamma", [1.7015043, None])
def test_the_tensorflow_form_is_rewritten_with_the_same_values(gamma):
    model = _graph(gamma=gamma)
    before = _run(model, X)
    expected = (0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi)
                                       * (X + 0.044715 * X ** 3)))
                * (1.0 if gamma is None else gamma))
    np.testing.assert_allclose(before, expected, rtol=1e-5, atol=1e-6)
    assert onnx_gelu.canonical_gelu(model) == 1
    ops_ = [n.op_type for n in model.graph.node]
    assert "Transpose" not in ops_ and ops_.count("Tanh") == 1
    # float32 rounding of a dozen elementwise ops in another order
    np.testing.assert_allclose(_run(model, X), before, rtol=1e-6,
                               atol=1e-6)
    assert onnx_gelu.canonical_gelu(model) == 0  # already canonical


def test_onnxruntime_fuses_the_rewritten_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    def optimized_ops(model, name):
        path = str(tmp_path / name)
        onnx.save(model, path)
        options = ort.SessionOptions()
        options.optimized_model_filepath = path + ".opt.onnx"
        session = ort.InferenceSession(path, options,
                                       providers=["CPUExecutionProvider"])
        ops_ = [n.op_type for n in
                onnx.load(options.optimized_model_filepath).graph.node]
        return ops_, session.run(None, {"x": X})[0]
    model = _graph()
    ops_before, y_before = optimized_ops(model, "before.onnx")
    assert "FastGelu" not in ops_before and "Tanh" in ops_before
    assert onnx_gelu.canonical_gelu(model) == 1
    ops_after, y_after = optimized_ops(model, "after.onnx")
    assert ops_after.count("FastGelu") == 1 and "Tanh" not in ops_after
    np.testing.assert_allclose(y_after, y_before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [
    dict(cubic=0.05),                   # another constant: another function
    dict(back_perm=(0, 2, 3, 1)),       # the cube in another axis order
])
def test_a_subgraph_that_is_not_the_gelu_is_left_alone(change):
    model = _graph(**change)
    before = model.SerializeToString()
    assert onnx_gelu.canonical_gelu(model) == 0
    assert model.SerializeToString() == before


def test_canonical_gelu_file_rewrites_in_place(tmp_path):
    path = str(tmp_path / "gelu.onnx")
    onnx.save(_graph(), path)
    assert onnx_gelu.canonical_gelu_file(path) == 1
    assert onnx_gelu.canonical_gelu_file(path) == 0
    np.testing.assert_allclose(_run(onnx.load(path), X), _run(_graph(), X),
                               rtol=1e-6, atol=1e-6)
