"""Metrics, inline drift, the prediction log and feedback, seen from outside."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from serving_helpers import serving, wait_for

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT


def infer_body(rows, request_id=None):
    body = {
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.to_numpy(np.float32).ravel().tolist()}
        ]
    }  # fmt: skip
    if request_id:
        body["id"] = request_id
    return body


@pytest.fixture(scope="module")
def observed(cancer_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("predlog") / "predictions.jsonl"
    env = {
        "KUBELOOP_SERVING_DRIFT_WINDOW": "200",
        "KUBELOOP_SERVING_DRIFT_THRESHOLD": "0.25",
        "KUBELOOP_SERVING_PREDICTION_LOG_INPUTS": "1",
        "KUBELOOP_SERVING_FEEDBACK_WINDOW": "50",
        "KUBELOOP_SERVING_FEEDBACK_FLOOR": "0.75",
    }
    with serving(cancer_model, "--name", "cancer", "--prediction-log", str(log), env=env) as s:
        yield s, log


def test_request_metrics_by_model_version_protocol_and_code(observed, cancer_rows):
    server, _ = observed
    with server.client() as http:
        version = http.get("/v2/models/cancer").json()["versions"][0]
        assert (
            http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[:2])).status_code
            == 200
        )
        assert http.post("/v2/models/cancer/infer", json={"inputs": []}).status_code == 400
        assert (
            http.post(
                "/v1/models/cancer:predict",
                json={"instances": cancer_rows.iloc[:1].to_numpy().tolist()},
            ).status_code
            == 200
        )
    ok = server.metric(
        "kubeloop_requests_total", model="cancer", version=version, protocol="v2", code="200"
    )
    bad = server.metric("kubeloop_requests_total", model="cancer", protocol="v2", code="400")
    v1 = server.metric("kubeloop_requests_total", model="cancer", protocol="v1", code="200")
    assert ok >= 1
    assert bad >= 1
    assert v1 >= 1
    assert (
        server.metric("kubeloop_request_duration_seconds_count", model="cancer", protocol="v2") >= 2
    )
    assert server.metric("kubeloop_batch_size_count", model="cancer") >= 2
    assert server.metric("kubeloop_model_ready", model="cancer") == 1
    assert server.metric("kubeloop_model_info", model="cancer", version=version) == 1
    total = sum(
        server.metric("kubeloop_predictions_total", model="cancer", **{"class": c}) or 0
        for c in ("0", "1")
    )
    assert total >= 3


def test_drift_rises_for_shifted_inputs_and_stays_low_for_training_like_ones(observed, cancer_rows):
    server, _ = observed
    with server.client() as http:
        for start in range(0, 200, 50):
            r = http.post(
                "/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[start : start + 50])
            )
            assert r.status_code == 200
    assert server.metric("kubeloop_drift_window_rows", model="cancer") == 200
    assert server.metric("kubeloop_drift_threshold", model="cancer") == 0.25
    calm = server.metric("kubeloop_drift_score", model="cancer")
    assert calm < 0.25, calm
    feature = cancer_rows.columns[0]
    assert (
        server.metric("kubeloop_feature_drift", model="cancer", feature=feature, method="psi")
        is not None
    )
    shifted = cancer_rows.iloc[:200].copy()
    shifted[feature] = shifted[feature] * 3 + 50
    with server.client() as http:
        r = http.post("/v2/models/cancer/infer", json=infer_body(shifted))
        assert r.status_code == 200
    score = server.metric("kubeloop_drift_score", model="cancer")
    assert score > 1.0, score
    assert (
        server.metric("kubeloop_feature_drift", model="cancer", feature=feature, method="psi")
        == score
    )
    assert server.metric("kubeloop_prediction_drift", model="cancer", method="psi") is not None


def test_prediction_log_has_one_line_per_row(observed, cancer_rows):
    server, log = observed
    with server.client() as http:
        r = http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[:3], "log-me"))
        assert r.status_code == 200

    def logged():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if "log-me" in line]

    wait_for("three prediction log lines for log-me", lambda: len(logged()) == 3)
    lines = logged()
    assert [line["row"] for line in lines] == [0, 1, 2]
    assert {line["request_id"] for line in lines} == {"log-me"}
    assert lines[0]["model"] == "cancer"
    assert set(lines[0]["outputs"]) == {LABEL_OUTPUT, PROBA_OUTPUT}
    assert len(lines[0]["inputs"]) == 30
    assert lines[0]["latency_ms"] > 0
    assert server.metric("kubeloop_prediction_log_lines_total", model="cancer") >= 3


def test_feedback_updates_the_online_metric_and_counts_unknown_ids(observed, cancer_rows, data_dir):
    import pandas as pd

    server, _ = observed
    truth = pd.read_csv(data_dir / "cancer.csv")["target"]
    with server.client() as http:
        ids = []
        for i in range(20):
            r = http.post(
                "/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[i : i + 1], f"fb-{i}")
            )
            assert r.json()["id"] == f"fb-{i}"
            ids.append(f"fb-{i}")
        single = http.post(
            "/v2/models/cancer/feedback", json={"id": "fb-0", "truth": int(truth[0])}
        )
        assert single.status_code == 200, single.text
        assert single.json()["matched"] == 1
        batch = [{"id": f"fb-{i}", "truth": int(truth[i])} for i in range(1, 20)]
        batch.append({"id": "never-seen", "truth": 1})
        r = http.post("/v2/models/cancer/feedback", json={"feedback": batch})
        doc = r.json()
        assert (doc["matched"], doc["unknown"], doc["unknown_ids"]) == (19, 1, ["never-seen"])
        assert doc["metric"] == "accuracy"
        assert doc["value"] > 0.8
        bad = http.post("/v2/models/cancer/feedback", json={"id": 5})
        assert bad.status_code == 400
        assert "'id' must be a non-empty string" in bad.json()["error"]
    accuracy = server.metric("kubeloop_online_metric", model="cancer", metric="accuracy")
    assert accuracy > 0.8
    # what adds up across replicas: hits over the window's rows, and the deployment's floor
    rows = server.metric("kubeloop_online_metric_rows", model="cancer")
    hits = server.metric("kubeloop_online_metric_score_sum", model="cancer", metric="accuracy")
    assert rows == 20
    assert hits / rows == pytest.approx(accuracy)
    assert server.metric("kubeloop_online_metric_floor", model="cancer", metric="accuracy") == 0.75
    assert server.metric("kubeloop_feedback_total", model="cancer", result="unknown") == 1
    assert server.metric("kubeloop_feedback_total", model="cancer", result="matched") == 20


def test_a_full_prediction_log_queue_drops_and_counts(cancer_model, cancer_rows):
    env = {"KUBELOOP_SERVING_PREDICTION_LOG_QUEUE": "1"}
    # /dev/full fails every write: lines are dropped and counted, requests unaffected
    with serving(
        cancer_model, "--name", "cancer", "--prediction-log", "/dev/full", env=env
    ) as server:
        with server.client() as http:
            for _ in range(20):
                assert (
                    http.post(
                        "/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[:1])
                    ).status_code
                    == 200
                )
        wait_for(
            "dropped prediction-log lines to be counted",
            lambda: (
                (server.metric("kubeloop_prediction_log_dropped_total", model="cancer") or 0) > 0
            ),
        )


def test_metrics_endpoint_is_prometheus_text(observed):
    server, _ = observed
    r = httpx.get(f"{server.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE kubeloop_drift_score gauge" in r.text
