"""``kubeloop register``'s pure part: how a graph is fed and read, and the manifest."""

from __future__ import annotations

import re

import pytest

from kubeloop.operator.names import model_version_name
from kubeloop.trainer.register import Graph, GraphTensor, Options, RegisterError, plan, version_name


def tensor(name: str, *shape: int, datatype: str | None = "FP32") -> GraphTensor:
    return GraphTensor(name, datatype, shape, "tensor(float)")


PACKED = Graph(
    inputs=[tensor("input", -1, 3)],
    outputs=[tensor("logits", -1, 2), tensor("cls", -1, datatype="INT64")],
)


def test_a_packed_input_takes_its_features_from_the_flag() -> None:
    planned = plan(PACKED, Options("classification", ["a", "b", "c"], "cls", "logits"))
    assert [f.name for f in planned.features] == ["a", "b", "c"]
    assert [f.shape for f in planned.features] == [[-1, 1]] * 3
    assert planned.packed_input == "input"
    assert (planned.label_output, planned.proba_output, planned.classes) == (
        "cls",
        "logits",
        [0, 1],
    )


def test_a_free_width_takes_any_number_of_names() -> None:
    graph = Graph([tensor("x", -1, -1)], [tensor("y", -1, 1)])
    planned = plan(graph, Options("regression", ["a", "b"]))
    assert (planned.packed_input, planned.label_output, planned.proba_output) == ("x", "y", None)


def test_inputs_one_per_feature_follow_the_trainer_convention() -> None:
    graph = Graph(
        [tensor("age", -1, 1), tensor("city", -1, 1, datatype="BYTES")],
        [tensor("label", -1, datatype="INT64"), tensor("probabilities", -1, 2)],
    )
    planned = plan(graph, Options("classification"))
    assert planned.packed_input is None
    assert [(f.name, f.datatype) for f in planned.features] == [("age", "FP32"), ("city", "BYTES")]
    assert (planned.label_output, planned.proba_output) == ("label", "probabilities")


@pytest.mark.parametrize(
    ("graph", "opts", "message"),
    [
        (PACKED, Options("classification"), "has one 2-D input 'input' [N, 3]: name its 3"),
        (PACKED, Options("classification", ["a", "b"], "cls"), "names 2 features; input"),
        (PACKED, Options("classification", ["a", "a", "b"], "cls"), "a feature is named twice"),
        (PACKED, Options("classification", ["a", "b", "c"]), "none named 'label'"),
        (PACKED, Options("classification", ["a", "b", "c"], "x"), "--label-output 'x'"),
        (
            PACKED,
            Options("classification", ["a", "b", "c"], "logits"),
            "output 'logits' [N, 2] cannot be the prediction: it needs one value per row",
        ),
        (PACKED, Options("regression", ["a", "b", "c"], "cls", "logits"), "no probabilities"),
        (
            Graph([tensor("a", -1, 2), tensor("b", -1, 3)], [tensor("y", -1, 1)]),
            Options("regression"),
            "has inputs 'a' [N, 2], 'b' [N, 3]: only one 2-D",
        ),
        (
            Graph([tensor("x", -1, 2, datatype="INT64")], [tensor("y", -1, 1)]),
            Options("regression", ["a", "b"]),
            "a 2-D input must be float",
        ),
        (
            Graph([tensor("a", -1, 1), tensor("b", -1, 1)], [tensor("y", -1, 1)]),
            Options("regression", ["a", "c"]),
            "the model's inputs are a, b",
        ),
        (
            Graph([tensor("x", -1, 2)], [tensor("y", datatype=None)]),
            Options("regression", ["a", "b"]),
            "output 'y' is tensor(float); only tensors",
        ),
    ],
)
def test_what_cannot_be_served_is_named(graph: Graph, opts: Options, message: str) -> None:
    with pytest.raises(RegisterError, match=re.escape(message)) as caught:
        plan(graph, opts)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("model", "version"), [("iris", 3), ("m" * 63, 12), ("a" * 60 + "-x", 7)])
def test_versions_are_named_as_the_operator_names_them(model: str, version: int) -> None:
    assert version_name(model, version) == model_version_name(model, version)
