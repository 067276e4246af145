"""The prediction log of a real ``kubeloop serve`` rotated by size and sampled, as the
operator configures it for spec.predictionLog."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
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


def test_rotated_files_are_shipped_to_a_real_s3_server(cancer_model, cancer_rows, tmp_path, s3):
    """sink objectStore: each rotated file goes to <prefix>/<pod>/<time ns>.jsonl on a real
    S3 server and leaves the pod; at shutdown the last one too: every line arrives once."""
    bucket = s3.make_bucket("kubeloop-predlog")
    log = tmp_path / "demo-stable-abc.jsonl"
    env = {
        **s3.env(),
        "KUBELOOP_SERVING_PREDICTION_LOG_MAX_BYTES": "4000",
        "KUBELOOP_SERVING_PREDICTION_LOG_UPLOAD": f"{bucket}/logs",
        "KUBELOOP_SERVING_POD_NAME": "demo-stable-abc",
    }
    fs = s3.fs()
    folder = "kubeloop-predlog/logs/demo-stable-abc"
    with serving(cancer_model, "--name", "cancer", "--prediction-log", str(log), env=env) as s:
        with s.client() as http:
            for i in range(60):
                r = http.post(
                    "/v2/models/cancer/infer",
                    json={**infer_body(cancer_rows.iloc[i : i + 1]), "id": f"r-{i}"},
                )
                assert r.status_code == 200
        wait_for("60 log lines written", lambda: lines_written(s) >= 60)
        wait_for(
            "rotated files in the bucket",
            lambda: fs.exists(folder) and len(fs.ls(folder)) >= 2,
        )
        # what waits locally is only the file being written
        assert [p.name for p in tmp_path.iterdir()] == [log.name]
    shipped = sorted(fs.ls(folder))
    assert all(p.rsplit("/", 1)[1].removesuffix(".jsonl").isdigit() for p in shipped)
    ids = [json.loads(line)["id"] for p in shipped for line in fs.cat(p).decode().splitlines()]
    assert sorted(ids) == sorted(f"r-{i}" for i in range(60))  # all of them, once
    assert not log.exists()  # the last file went at shutdown


def test_an_unreachable_store_keeps_at_most_keep_files_waiting(cancer_model, cancer_rows, tmp_path):
    log = tmp_path / "p.jsonl"
    env = {
        "KUBELOOP_SERVING_PREDICTION_LOG_MAX_BYTES": "2000",
        "KUBELOOP_SERVING_PREDICTION_LOG_KEEP": "2",
        "KUBELOOP_SERVING_PREDICTION_LOG_UPLOAD": "s3://kubeloop-nowhere/logs",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: every put fails
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_MAX_ATTEMPTS": "1",
    }
    with serving(cancer_model, "--name", "cancer", "--prediction-log", str(log), env=env) as s:
        with s.client() as http:
            for i in range(80):
                r = http.post(
                    "/v2/models/cancer/infer", json=infer_body(cancer_rows.iloc[i : i + 1])
                )
                assert r.status_code == 200  # requests never wait on the store
        wait_for("80 log lines written", lambda: lines_written(s) >= 80)
        wait_for(
            "the oldest waiting files to be dropped and counted",
            lambda: (
                (s.metric("kubeloop_prediction_log_dropped_total", reason="not_shipped") or 0) > 0
            ),
        )
        waiting = [p for p in tmp_path.iterdir() if p.name != log.name]
        assert len(waiting) <= 2


def test_concurrent_predictions_are_each_logged_once_with_their_own_outputs(
    cancer_model, cancer_rows, tmp_path
):
    """Requests answered together (one micro-batch, one event-loop turn) are queued as one
    batch; each still gets its own line, with its id, its outputs and the line fields."""
    log = tmp_path / "p.jsonl"
    n = 192

    def ask(http, i):
        body = infer_body(cancer_rows.iloc[i % len(cancer_rows) : i % len(cancer_rows) + 1])
        r = http.post("/v2/models/cancer/infer", json={**body, "id": f"req-{i}"})
        assert r.status_code == 200
        return f"req-{i}", {o["name"]: o["data"] for o in r.json()["outputs"]}

    with serving(cancer_model, "--name", "cancer", "--prediction-log", str(log)) as s:
        with s.client() as http, ThreadPoolExecutor(16) as pool:
            answers = dict(pool.map(lambda i: ask(http, i), range(n)))
        wait_for(f"{n} log lines written", lambda: lines_written(s) >= n)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(answers)
    for line in lines:
        assert line["request_id"] == line["id"]
        assert (line["row"], line["model"], line["variant"]) == (0, "cancer", "stable")
        assert line["time"].endswith("Z")
        assert line["latency_ms"] >= 0
        outputs = answers[line["id"]]
        assert [line["outputs"]["label"]] == outputs["label"]
        assert line["outputs"]["probabilities"] == pytest.approx(outputs["probabilities"])
