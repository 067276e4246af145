"""The prediction log of a real ``kubeloop serve`` rotated by size and sampled, as the
operator configures it for spec.predictionLog."""

from __future__ import annotations

import json

import numpy as np
from serving_helpers import serving, wait_for


def infer_body(rows):
    return {
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.to_numpy(np.float32).ravel().tolist()}
        ]
    }  # fmt: skip


def lines_written(server) -> float:
    return server.metric("kubeloop_prediction_log_lines_total", model="cancer") or 0


def test_the_log_file_rotates_by_size_and_keeps_n(cancer_model, cancer_rows, tmp_path):
    log = tmp_path / "demo-stable-abc.jsonl"
    env = {
        "KUBELOOP_SERVING_PREDICTION_LOG_MAX_BYTES": "4000",
        "KUBELOOP_SERVING_PREDICTION_LOG_KEEP": "2",
    }
    with serving(cancer_model, "--name", "cancer", "--prediction-log", str(log), env=env) as s:
        with s.client() as http:
            for i in range(120):  # ~300 bytes a line: about nine files' worth
                r = http.post(
                    "/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[i : i + 1])
                )
                assert r.status_code == 200
        wait_for("120 log lines written", lambda: lines_written(s) >= 120)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [log.name, f"{log.name}.1", f"{log.name}.2"], names
    for path in tmp_path.iterdir():
        assert 0 < path.stat().st_size <= 4000, (path, path.stat().st_size)
        for line in path.read_text().splitlines():
            json.loads(line)  # no line is cut across files


def test_sample_rate_logs_a_share_of_predictions(cancer_model, cancer_rows, tmp_path):
    log = tmp_path / "p.jsonl"
    env = {"KUBELOOP_SERVING_PREDICTION_LOG_SAMPLE_RATE": "0.5"}
    with (
        serving(cancer_model, "--name", "cancer", "--prediction-log", str(log), env=env) as s,
        s.client() as http,
    ):
        for i in range(200):
            r = http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[i : i + 1]))
            assert r.status_code == 200
    # stopped: the queue was flushed at shutdown, so every sampled line is in the file
    logged = len(log.read_text().splitlines())
    assert 50 <= logged <= 150, logged  # binomial(200, 0.5): outside this ~1e-12
