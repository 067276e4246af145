"""XGBoost and LightGBM models trained by ``kubeloop train`` (a real process) and served by
``kubeloop serve`` (a real process): the server answers with the data's labels, and its
answers are the ONNX model's, which passed the trainer's parity gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from serving_helpers import Server, serving, train

from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
    ModelMetadata,
)

# (name, data file, target, task, estimator)
MODELS = [
    ("mixed-xgb", "mixed.csv", "outcome", "classification", "XGBClassifier"),
    ("mixed-lgbm", "mixed.csv", "outcome", "classification", "LGBMClassifier"),
    ("diabetes-xgb", "diabetes.csv", "target", "regression", "XGBRegressor"),
    ("diabetes-lgbm", "diabetes.csv", "target", "regression", "LGBMRegressor"),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def served(
    request: pytest.FixtureRequest, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path, pd.DataFrame, str]]:
    name, data, target, task, estimator = request.param
    out = train(
        data_dir / data, target, task, estimator, tmp_path_factory.mktemp(name),
        '{"n_estimators": 40}',
    )  # fmt: skip
    rows = pd.read_csv(data_dir / data).drop(columns=[target]).iloc[:25]
    with serving(out, "--name", name) as server:
        yield server, out, rows, name


def v2_inputs(rows: pd.DataFrame) -> list[dict[str, object]]:
    inputs: list[dict[str, object]] = []
    for column in rows.columns:
        if pd.api.types.is_numeric_dtype(rows[column]):
            values = [float(v) for v in rows[column]]  # a gap travels as NaN
            inputs.append({"name": column, "datatype": "FP32", "shape": [len(rows), 1],
                           "data": values})  # fmt: skip
        else:
            inputs.append({"name": column, "datatype": "BYTES", "shape": [len(rows), 1],
                           "data": rows[column].tolist()})  # fmt: skip
    return inputs


def local_onnx(model_dir: Path, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """model.onnx run here with onnxruntime: what the server must answer."""
    sess = ort.InferenceSession(
        (model_dir / ArtifactLayout.MODEL).read_bytes(), providers=["CPUExecutionProvider"]
    )
    feeds = {}
    for column in rows.columns:
        if pd.api.types.is_numeric_dtype(rows[column]):
            feeds[column] = rows[[column]].to_numpy(np.float32)
        else:
            feeds[column] = rows[[column]].to_numpy(object)
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds), strict=True)}


def test_served_boosted_model_answers_as_its_onnx_model(served):
    server, out, rows, name = served
    meta = ModelMetadata.model_validate_json((out / ArtifactLayout.METADATA).read_text())
    assert meta.parity is not None
    assert meta.parity.passed
    assert meta.native_importance is not None
    response = httpx.post(
        f"{server.url}/v2/models/{name}/infer",
        content=json.dumps({"inputs": v2_inputs(rows)}).encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = local_onnx(out, rows)
    if meta.task == "classification":
        assert meta.classes == ["no", "yes"]
        labels = outputs[LABEL_OUTPUT]["data"]
        assert set(labels) <= {"no", "yes"}
        assert labels == expected[LABEL_OUTPUT].reshape(-1).tolist()
        proba = np.asarray(outputs[PROBA_OUTPUT]["data"]).reshape(len(rows), 2)
        np.testing.assert_allclose(proba, expected[PROBA_OUTPUT], atol=1e-6)
    else:
        values = np.asarray(outputs[VALUE_OUTPUT]["data"]).reshape(-1)
        np.testing.assert_allclose(values, expected[VALUE_OUTPUT].reshape(-1), rtol=1e-6)


def test_served_metadata_names_the_model_s_inputs(served):
    server, _, rows, name = served
    meta = httpx.get(f"{server.url}/v2/models/{name}", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == list(rows.columns)
