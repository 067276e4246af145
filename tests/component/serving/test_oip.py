"""Open Inference Protocol v2 conformance with the official Triton/KServe client,
plus KServe V1 and the repository extension."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from serving_helpers import serving
from tritonclient.utils import InferenceServerException

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT


@pytest.fixture(scope="module")
def client(cancer):
    c = triton.InferenceServerClient(cancer.url.removeprefix("http://"))
    yield c
    c.close()


def feature_inputs(rows, binary: bool):
    inputs = []
    for name in rows.columns:
        inp = triton.InferInput(name, [len(rows), 1], "FP32")
        inp.set_data_from_numpy(rows[[name]].to_numpy(np.float32), binary_data=binary)
        inputs.append(inp)
    return inputs


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "kubeloop"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness(client, cancer_rows):
    meta = client.get_model_metadata("cancer")
    assert meta["name"] == "cancer"
    assert [i["name"] for i in meta["inputs"]] == list(cancer_rows.columns)
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32"}
    assert {o["name"] for o in meta["outputs"]} == {LABEL_OUTPUT, PROBA_OUTPUT}
    version = meta["versions"][0]
    assert client.is_model_ready("cancer")
    assert client.is_model_ready("cancer", version)
    assert client.get_model_metadata("cancer", version)["name"] == "cancer"
    assert not client.is_model_ready("cancer", "no-such-version")
    assert not client.is_model_ready("other")
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_metadata("other")


@pytest.mark.parametrize("binary", [True, False])
def test_infer_one_input_per_feature(client, cancer_rows, binary):
    rows = cancer_rows.iloc[:5]
    outputs = None if binary else [
        triton.InferRequestedOutput(LABEL_OUTPUT, binary_data=False),
        triton.InferRequestedOutput(PROBA_OUTPUT, binary_data=False),
    ]  # fmt: skip
    result = client.infer(
        "cancer", feature_inputs(rows, binary), outputs=outputs, request_id="req-1"
    )
    labels = result.as_numpy(LABEL_OUTPUT)
    probs = result.as_numpy(PROBA_OUTPUT)
    assert labels.shape == (5,)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert labels.tolist() == probs.argmax(axis=1).tolist()
    assert result.get_response()["id"] == "req-1"


def test_infer_one_2d_tensor(client, cancer_rows):
    rows = cancer_rows.iloc[:3].to_numpy(np.float32)
    inp = triton.InferInput("input-0", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    out = triton.InferRequestedOutput(PROBA_OUTPUT, binary_data=True)
    result = client.infer("cancer", [inp], outputs=[out])
    per_column = client.infer("cancer", feature_inputs(cancer_rows.iloc[:3], True))
    np.testing.assert_allclose(
        result.as_numpy(PROBA_OUTPUT), per_column.as_numpy(PROBA_OUTPUT), rtol=1e-6
    )
    assert result.as_numpy(LABEL_OUTPUT) is None  # only what was asked for


def test_versioned_infer_and_unknown_version(client, cancer_rows):
    version = client.get_model_metadata("cancer")["versions"][0]
    result = client.infer(
        "cancer", feature_inputs(cancer_rows.iloc[:1], True), model_version=version
    )
    assert result.get_response()["model_version"] == version
    with pytest.raises(InferenceServerException, match="no version 'nope'"):
        client.infer("cancer", feature_inputs(cancer_rows.iloc[:1], True), model_version="nope")


def test_rest_json_round_trip(cancer, cancer_rows):
    row = cancer_rows.iloc[0]
    body = {
        "id": "abc",
        "inputs": [
            {"name": n, "shape": [1], "datatype": "FP64", "data": [float(row[n])]}
            for n in cancer_rows.columns
        ],
    }
    with cancer.client() as http:
        r = http.post("/v2/models/cancer/infer", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == "abc"
        assert doc["model_name"] == "cancer"
        out = {o["name"]: o for o in doc["outputs"]}
        assert out[LABEL_OUTPUT]["shape"] == [1]
        assert out[PROBA_OUTPUT]["shape"] == [1, 2]
        assert len(out[PROBA_OUTPUT]["data"]) == 2


def test_kserve_v1_rows_and_records_agree_with_v2(cancer, cancer_rows):
    rows = cancer_rows.iloc[:4]
    with cancer.client() as http:
        a = http.post("/v1/models/cancer:predict", json={"instances": rows.to_numpy().tolist()})
        b = http.post("/v1/models/cancer:predict", json={"instances": rows.to_dict("records")})
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.json()["predictions"] == b.json()["predictions"]
        assert len(a.json()["predictions"]) == 4
        assert http.get("/v1/models/cancer").json() == {"name": "cancer", "ready": True}
        assert http.get("/v1/models").json() == {"models": ["cancer"]}
        v2 = http.post(
            "/v2/models/cancer/infer",
            json={"inputs": [{"name": "x", "shape": [4, 30], "datatype": "FP32",
                              "data": rows.to_numpy().ravel().tolist()}]},
        ).json()  # fmt: skip
        labels = next(o for o in v2["outputs"] if o["name"] == LABEL_OUTPUT)["data"]
        assert labels == a.json()["predictions"]


def test_repository_index_and_load(client):
    index = client.get_model_repository_index()
    assert index[0]["name"] == "cancer"
    assert index[0]["state"] == "READY"
    # model control is off by default (test_write_guard.py has it on)
    with pytest.raises(InferenceServerException, match="model control disabled"):
        client.load_model("cancer")
    with pytest.raises(InferenceServerException, match="model control disabled"):
        client.unload_model("cancer")
    assert client.is_model_ready("cancer")


def test_classifier_on_mixed_types(mixed_model):
    with serving(mixed_model, "--name", "mixed") as server, server.client() as http:
        meta = http.get("/v2/models/mixed").json()
        types = {i["name"]: i["datatype"] for i in meta["inputs"]}
        assert types["city"] == "BYTES"
        body = {
            "inputs": [
                {"name": "age", "shape": [2], "datatype": "FP32", "data": [30, 55]},
                {"name": "income", "shape": [2], "datatype": "FP32", "data": [40, 60]},
                {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["rome", "oslo"]},
            ]
        }
        r = http.post("/v2/models/mixed/infer", json=body)
        assert r.status_code == 200, r.text
        labels = next(o for o in r.json()["outputs"] if o["name"] == LABEL_OUTPUT)
        assert labels["datatype"] == "BYTES"
        assert set(labels["data"]) <= {"yes", "no"}
        r = http.post("/v1/models/mixed:predict", json={"instances": [
            {"age": 30, "income": None, "city": "paris"}]})  # fmt: skip
        assert r.status_code == 200, r.text  # income is nullable in the training data


def test_regression(diabetes_model):
    with serving(diabetes_model, "--name", "diabetes") as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        meta = client.get_model_metadata("diabetes")
        names = [i["name"] for i in meta["inputs"]]
        inputs = []
        for n in names:
            inp = triton.InferInput(n, [2, 1], "FP32")
            inp.set_data_from_numpy(np.array([[0.01], [-0.02]], dtype=np.float32))
            inputs.append(inp)
        result = client.infer("diabetes", inputs)
        out = meta["outputs"][0]["name"]
        values = result.as_numpy(out)
        assert values.shape[0] == 2
        assert np.all(np.isfinite(values))
        client.close()


def test_the_fastapi_routes_answer_like_the_fast_path(cancer_model, cancer_rows):
    rows = cancer_rows.iloc[:2]
    body = {"inputs": [{"name": "x", "shape": [2, 30], "datatype": "FP32",
                        "data": rows.to_numpy(np.float32).ravel().tolist()}]}  # fmt: skip
    answers = []
    for fast in ("true", "false"):
        env = {"KUBELOOP_SERVING_FAST_PATH": fast}
        with serving(cancer_model, "--name", "cancer", env=env) as server, server.client() as http:
            ok = http.post("/v2/models/cancer/infer", json=dict(body, id="same"))
            bad = http.post("/v2/models/cancer/infer", json={"inputs": [{"name": "nope"}]})
            v1 = http.post(
                "/v1/models/cancer:predict", json={"instances": rows.to_numpy().tolist()}
            )
            answers.append((ok.status_code, ok.json(), bad.status_code, bad.json(), v1.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200
    assert answers[0][2] == 400
