"""Start-up verification, hot reload under load, failed loads and graceful shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
from serving_helpers import serving, start_server, wait_for

from kubeloop.contracts.artifacts import ArtifactLayout


def publish(src: Path, dst: Path) -> None:
    """Replace the model in ``dst`` the way a writer should: model.json last."""
    for name in (ArtifactLayout.MODEL, ArtifactLayout.PROFILE, ArtifactLayout.METADATA):
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)


def body(rows):
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.to_numpy(np.float32).ravel().tolist()}]}  # fmt: skip


def version_of(server) -> str:
    return httpx.get(f"{server.url}/v2/models/cancer").json()["versions"][0]


def test_a_digest_mismatch_never_becomes_ready(cancer_model, tmp_path):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    meta = json.loads((model / ArtifactLayout.METADATA).read_text())
    meta["sha256"] = "0" * 64
    (model / ArtifactLayout.METADATA).write_text(json.dumps(meta))
    server = start_server(model, "--name", "cancer", ready=False)
    try:
        wait_for("the failed load to be logged", lambda: "refusing to serve it" in server.log)
        r = httpx.get(f"{server.url}/v2/health/ready")
        assert r.status_code == 503
        assert "sha256" in r.json()["error"]
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        r = httpx.post(f"{server.url}/v2/models/cancer/infer", json={"inputs": []})
        assert r.status_code == 503
    finally:
        server.stop()


def test_hot_reload_under_load_without_a_failed_request(
    cancer_model, other_cancer_model, cancer_rows, tmp_path
):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    env = {"KUBELOOP_SERVING_RELOAD_INTERVAL": "0.2"}
    with serving(model, "--name", "cancer", env=env) as server:
        before = version_of(server)
        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def load() -> None:
            with server.client() as http:
                while not stop.is_set():
                    r = http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:2]))
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for("some requests before the swap", lambda: len(statuses) > 50)
            publish(other_cancer_model, model)
            wait_for("the new version to be served", lambda: version_of(server) != before)
            seen = len(statuses)
            wait_for("requests after the swap", lambda: len(statuses) > seen + 50)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert before in versions
        assert version_of(server) in versions
        assert server.metric("kubeloop_model_loads_total", model="cancer", result="success") == 2


def test_load_endpoint_and_a_failed_load_keeps_the_old_model(
    cancer_model, other_cancer_model, cancer_rows, tmp_path
):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    env = {"KUBELOOP_SERVING_RELOAD_INTERVAL": "0", "KUBELOOP_SERVING_MODEL_CONTROL": "true"}
    with serving(model, "--name", "cancer", env=env) as server:
        before = version_of(server)
        with server.client() as http:
            # a broken artifact: the model.onnx does not match model.json
            (model / ArtifactLayout.MODEL).write_bytes(b"not a model")
            r = http.post("/v2/repository/models/cancer/load")
            assert r.status_code == 400
            assert "sha256" in r.json()["error"]
            assert http.get("/v2/health/ready").status_code == 200
            assert (
                http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:1])).status_code
                == 200
            )
            assert version_of(server) == before
            assert (
                server.metric("kubeloop_model_loads_total", model="cancer", result="failure") == 1
            )
            # a good new model, loaded on request
            publish(other_cancer_model, model)
            r = http.post("/v2/repository/models/cancer/load")
            assert r.status_code == 200, r.text
            assert r.json()["version"] != before
            assert version_of(server) == r.json()["version"]
            r = http.post("/v2/repository/models/other/load")
            assert r.status_code == 404


def test_sigterm_reports_not_ready_keeps_serving_while_draining_then_exits(
    cancer_model, cancer_rows
):
    server = start_server(
        cancer_model, "--name", "cancer", env={"KUBELOOP_SERVING_DRAIN_SECONDS": "3"}
    )
    try:
        with server.client() as http:
            server.proc.send_signal(signal.SIGTERM)
            wait_for("readiness to drop", lambda: http.get("/v2/health/ready").status_code == 503)
            assert "shutting down" in http.get("/v2/health/ready").json()["error"]
            assert (
                http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:1])).status_code
                == 200
            )
        assert server.proc.wait(30) == 0
        assert "draining" in server.log
    finally:
        server.stop(signal.SIGKILL)
