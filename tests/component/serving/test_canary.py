"""Canary forwarding between two real servers: share, run-time weight changes,
an unreachable canary, canary errors and shadow mode."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import serving, wait_for


@pytest.fixture(scope="module")
def canary_model(data_dir, tmp_path_factory):
    from serving_helpers import train

    out = tmp_path_factory.mktemp("cancer_canary")
    return train(data_dir / "cancer.csv", "target", "classification", "LogisticRegression", out,
                 '{"C": 0.05, "max_iter": 2000}')  # fmt: skip


@pytest.fixture(scope="module")
def canary(canary_model):
    with serving(canary_model, "--name", "cancer") as server:
        yield server


def body(rows):
    data = rows.to_numpy(np.float32).ravel().tolist()
    return json.dumps(
        {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}]}
    )


def weight(server) -> float | None:
    return server.metric("kubeloop_canary_weight", model="cancer", mode="forward")


def variants(server, payload: str, n: int, threads: int = 4) -> list[str]:
    def one(_: int) -> str:
        r = http.post(
            "/v2/models/cancer/infer", content=payload, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        return r.headers.get("x-kubeloop-variant", "stable")

    with server.client() as http, ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_share_within_two_points_over_5000_requests(cancer_model, canary, cancer_rows):
    payload = body(cancer_rows.iloc[:1])
    with serving(
        cancer_model, "--name", "cancer", "--canary-url", canary.url, "--canary-weight", "20"
    ) as stable:
        seen = variants(stable, payload, 5000)
        share = seen.count("canary") / len(seen)
        assert abs(share - 0.20) <= 0.02, share
        assert stable.metric(
            "kubeloop_canary_requests_total", model="cancer", mode="forward", outcome="ok"
        ) == seen.count("canary")
        assert stable.metric(
            "kubeloop_requests_total", model="cancer", variant="canary", code="200"
        ) == seen.count("canary")
        assert stable.metric("kubeloop_canary_weight", model="cancer", mode="forward") == 20


def test_routing_file_changes_apply_at_run_time(cancer_model, canary, cancer_rows, tmp_path):
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({"canary_url": None, "weight": 0}))
    env = {"KUBELOOP_SERVING_CONFIG_POLL_INTERVAL": "0.1"}
    payload = body(cancer_rows.iloc[:1])
    with serving(
        cancer_model, "--name", "cancer", "--routing-file", str(routing), env=env
    ) as stable:
        assert set(variants(stable, payload, 50)) == {"stable"}
        routing.write_text(
            json.dumps({"canary_url": canary.url, "weight": 50, "canary_version": 2})
        )
        wait_for("the new weight to apply", lambda: weight(stable) == 50)
        seen = variants(stable, payload, 400)
        assert abs(seen.count("canary") / 400 - 0.5) <= 0.02
        routing.write_text(json.dumps({"canary_url": None, "weight": 0}))
        wait_for("the canary to be switched off", lambda: weight(stable) == 0)
        assert set(variants(stable, payload, 50)) == {"stable"}


def test_an_unreachable_canary_leaves_the_answer_to_the_stable_model(cancer_model, cancer_rows):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with serving(
        cancer_model, "--name", "cancer", "--canary-url", dead, "--canary-weight", "100"
    ) as stable:
        seen = variants(stable, body(cancer_rows.iloc[:1]), 20, threads=1)
        assert set(seen) == {"stable"}
        assert (
            stable.metric(
                "kubeloop_canary_requests_total",
                model="cancer",
                mode="forward",
                outcome="unreachable",
            )
            == 20
        )


def test_canary_errors_count_against_the_canary(cancer_model, canary):
    with serving(
        cancer_model, "--name", "cancer", "--canary-url", canary.url, "--canary-weight", "100"
    ) as stable:
        with stable.client() as http:
            r = http.post("/v2/models/cancer/infer", json={"inputs": [{"name": "nope"}]})
        assert r.status_code == 400
        assert r.headers["x-kubeloop-variant"] == "canary"
        assert (
            stable.metric("kubeloop_requests_total", model="cancer", variant="canary", code="400")
            == 1
        )
        assert (
            stable.metric("kubeloop_requests_total", model="cancer", variant="stable", code="400")
            is None
        )


def test_shadow_mode_mirrors_and_records_agreement(cancer_model, cancer_rows):
    with (
        serving(cancer_model, "--name", "cancer") as twin,
        serving(
            cancer_model,
            "--name",
            "cancer",
            "--canary-url",
            twin.url,
            "--canary-weight",
            "100",
            "--shadow",
        ) as stable,
    ):
        seen = variants(stable, body(cancer_rows.iloc[:3]), 30, threads=1)
        assert set(seen) == {"stable"}
        wait_for(
            "30 mirrored comparisons",
            lambda: stable.metric("kubeloop_shadow_compared_total", result="agree") == 30,
        )
        assert stable.metric("kubeloop_shadow_agreement", model="cancer") == 1.0
        assert twin.metric("kubeloop_requests_total", model="cancer", code="200") == 30
