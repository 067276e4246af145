"""A registered model's one 2-D input: model.json's features must fit the graph's, and a
per-feature feed is stacked into it in model.json's order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeloop import inference
from kubeloop.inference import Feature
from onnx_models import linear_regression


@pytest.fixture
def session(tmp_path: Path) -> Any:
    model = linear_regression(tmp_path / "reg.onnx", np.array([1.0, 10.0, 100.0]), 0.0)
    return inference.new_session(model.read_bytes(), threads=1)


def feats(*names: str) -> list[Feature]:
    return [Feature(n, nullable=False) for n in names]


def test_the_features_take_the_inputs_type_and_are_stacked_in_order(session) -> None:
    specs = inference.input_specs(feats("a", "b", "c"), session, packed="x")
    assert [(s.name, s.datatype) for s in specs] == [("a", "FP32"), ("b", "FP32"), ("c", "FP32")]
    columns = {n: np.full((2, 1), v, np.float32) for n, v in (("c", 3.0), ("a", 1.0), ("b", 2.0))}
    feed = inference.pack(columns, ["a", "b", "c"], "x")
    assert feed["x"].tolist() == [[1.0, 2.0, 3.0]] * 2
    assert session.run(None, feed)[0].ravel().tolist() == [321.0, 321.0]


@pytest.mark.parametrize(
    ("names", "packed", "message"),
    [
        (("a", "b"), "x", "input 'x' takes 3 features, not 2"),
        (("a", "b", "c"), "input", "has inputs ['x'], not the one 'input'"),
    ],
)
def test_a_model_json_that_does_not_fit_the_graph_is_refused(session, names, packed, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        inference.input_specs(feats(*names), session, packed=packed)
