"""Canary forwarding between two real servers: share, run-time weight changes,
an unreachable canary, canary errors and shadow mode."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from serving_helpers import Server, serving, start_server, wait_for

from kubeloop.contracts.artifacts import ArtifactLayout

OUTCOMES = ("ok", "client_error", "server_error", "unreachable")


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


def test_a_canary_4xx_is_relayed_and_counted_as_a_client_error(cancer_model, canary):
    """A 4xx is the request's fault, not the canary's: the client gets it as is."""
    with serving(
        cancer_model,
        "--name",
        "cancer",
        "--canary-url",
        canary.url,
        "--canary-weight",
        "100",
        env={"KUBELOOP_SERVING_CANARY_VERSION": "3"},
    ) as stable:
        with stable.client() as http:
            r = http.post("/v2/models/cancer/infer", json={"inputs": [{"name": "nope"}]})
        assert r.status_code == 400
        assert r.headers["x-kubeloop-variant"] == "canary"
        assert (
            stable.metric(
                "kubeloop_requests_total", model="cancer", version="3", variant="canary", code="400"
            )
            == 1
        )
        assert (
            stable.metric("kubeloop_requests_total", model="cancer", variant="stable", code="400")
            is None
        )
        assert forwarded(stable, "3") == {"client_error": 1}


def test_a_canary_404_is_answered_by_the_stable_and_counted_as_a_server_error(
    cancer_model, cancer_rows
):
    """The stable forwards only requests for the model it serves, so a 404 from the
    canary's address (another model there, or something else answering) is the canary's
    failure: the stable answers."""
    with (
        serving(cancer_model, "--name", "other") as elsewhere,
        serving(
            cancer_model, "--name", "cancer", "--canary-url", elsewhere.url, "--canary-weight",
            "100", env={"KUBELOOP_SERVING_CANARY_VERSION": "3"},
        ) as stable,
    ):  # fmt: skip
        seen = variants(stable, body(cancer_rows.iloc[:1]), 10, threads=1)
        assert set(seen) == {"stable"}
        assert forwarded(stable, "3") == {"server_error": 10}
        assert (
            stable.metric("kubeloop_requests_total", model="cancer", variant="stable", code="200")
            == 10
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


def test_a_shadow_upstream_is_mirrored_while_the_canary_takes_its_forward_share(
    cancer_model, canary, cancer_rows, tmp_path
):
    """The routing file names a canary (forwarded 50%) and a shadow of its own (mirrored
    100% of what the stable model answers): both run at once; comparisons count under the
    shadow's version, and the shadow's answers never reach the client."""
    routing = tmp_path / "routing.json"
    with serving(cancer_model, "--name", "cancer") as shadow:
        routing.write_text(
            json.dumps(
                {"canary_url": canary.url, "weight": 50, "canary_version": 3,
                 "shadow_url": shadow.url, "shadow_weight": 100, "shadow_version": 7}
            )
        )  # fmt: skip
        with serving(cancer_model, "--name", "cancer", "--routing-file", str(routing)) as stable:
            seen = variants(stable, body(cancer_rows.iloc[:3]), 40, threads=1)
            answered = seen.count("stable")
            assert seen.count("canary") == 20  # the exact forward share
            assert answered == 20
            wait_for(
                f"{answered} mirrored comparisons under the shadow's version",
                lambda: (
                    stable.metric("kubeloop_shadow_compared_total", version="7", result="agree")
                    == answered
                ),
            )
            assert stable.metric("kubeloop_shadow_agreement", model="cancer", version="7") == 1.0
            assert shadow.metric("kubeloop_requests_total", model="cancer", code="200") == answered
            assert forwarded(stable, "3") == {"ok": 20}


def outcomes(stable: Server, version: str) -> dict[str, float | None]:
    """The stable pod's forward outcomes counted under canary ``version`` (None: absent)."""
    return {
        outcome: stable.metric(
            "kubeloop_canary_requests_total",
            model="cancer",
            version=version,
            mode="forward",
            outcome=outcome,
        )
        for outcome in OUTCOMES
    }


def forwarded(stable: Server, version: str) -> dict[str, float]:
    """The outcomes that happened (left out: those at 0 or absent)."""
    return {k: v for k, v in outcomes(stable, version).items() if v}


@contextmanager
def failing_canary(status: int | None) -> Iterator[str]:
    """A real HTTP server on loopback standing in for a broken canary: it answers every
    POST with ``status``, or (None) never answers until the test ends."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            if status is None:
                release.wait(60)  # hangs: the stable pod's canary_timeout fires first
                return
            payload = b'{"error": "canary broke"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def routed(tmp_path, url: str, version: int, weight: int = 100) -> str:
    """A routing file as the operator writes it: the canary's URL, share and version."""
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"canary_url": url, "weight": weight, "canary_version": version}))
    return str(path)


def stable_answers(stable: Server, payload: str, n: int) -> list[dict]:
    """``n`` requests, each answered 200 by the stable model (no canary variant header)."""
    answers = []
    with stable.client() as http:
        for _ in range(n):
            r = http.post(
                "/v2/models/cancer/infer",
                content=payload,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 200, r.text
            assert "x-kubeloop-variant" not in r.headers
            answers.append(r.json())
    return answers


def stable_version(stable: Server) -> str:
    with stable.client() as http:
        return str(http.get("/v2/models/cancer").json()["versions"][0])


@pytest.mark.parametrize("status", [500, 503])
def test_a_canary_5xx_is_answered_by_the_stable_model_and_counted_against_the_canary(
    cancer_model, cancer_rows, tmp_path, status
):
    payload = body(cancer_rows.iloc[:2])
    with (
        failing_canary(status) as url,
        serving(
            cancer_model, "--name", "cancer", "--routing-file", routed(tmp_path, url, 7)
        ) as stable,
    ):
        # exported at 0 before the first request: rate() needs the series before it grows
        assert outcomes(stable, "7") == dict.fromkeys(OUTCOMES, 0)
        answers = stable_answers(stable, payload, 10)
        assert all(a["model_version"] == stable_version(stable) for a in answers)
        assert forwarded(stable, "7") == {"server_error": 10}
        # the client saw 10 stable answers; none counts as the canary's, nor as a success of it
        mine = stable_version(stable)
        assert (
            stable.metric(
                "kubeloop_requests_total",
                model="cancer",
                version=mine,
                variant="stable",
                code="200",
            )
            == 10
        )
        assert stable.metric("kubeloop_requests_total", model="cancer", variant="canary") is None
        assert f"answered {status}, stable answers" in stable.log


def test_a_canary_that_never_answers_times_out_to_the_stable_model(
    cancer_model, cancer_rows, tmp_path
):
    env = {"KUBELOOP_SERVING_CANARY_TIMEOUT": "0.3"}
    with (
        failing_canary(None) as url,
        serving(
            cancer_model, "--name", "cancer", "--routing-file", routed(tmp_path, url, 4), env=env
        ) as stable,
    ):
        stable_answers(stable, body(cancer_rows.iloc[:1]), 3)
        assert forwarded(stable, "4") == {"unreachable": 3}


def test_a_stopped_canary_process_is_counted_unreachable_and_the_client_is_served(
    cancer_model, canary_model, cancer_rows, tmp_path
):
    """A real canary serves (ok under its version), then stops: the stable model answers."""
    payload = body(cancer_rows.iloc[:1])
    gone = start_server(canary_model, "--name", "cancer")
    try:
        with serving(
            cancer_model, "--name", "cancer", "--routing-file", routed(tmp_path, gone.url, 2)
        ) as stable:
            assert set(variants(stable, payload, 5, threads=1)) == {"canary"}
            assert (
                stable.metric(
                    "kubeloop_requests_total",
                    model="cancer",
                    version="2",
                    variant="canary",
                    code="200",
                )
                == 5
            )
            gone.stop()
            stable_answers(stable, payload, 5)
            assert forwarded(stable, "2") == {"ok": 5, "unreachable": 5}
    finally:
        gone.stop()


def value_buckets(server: Server) -> list[str]:
    """The ``le`` bounds of the server's prediction-value histogram."""
    with server.client() as http:
        text = http.get("/metrics").text
    return [
        line.split('le="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("kubeloop_prediction_value_bucket{")
    ]


def test_a_canary_buckets_its_predictions_with_the_stable_models_edges(diabetes_model, tmp_path):
    """predictionShift compares canary and stable value histograms bucket by bucket."""
    own = shutil.copytree(diabetes_model, tmp_path / "canary")
    profile = json.loads((own / ArtifactLayout.PROFILE).read_text())
    profile["prediction"]["edges"] = [0.0, 1000.0, 2000.0]
    profile["prediction"]["counts"] = [1, 1]
    (own / ArtifactLayout.PROFILE).write_text(json.dumps(profile))
    env = {"KUBELOOP_SERVING_PREDICTION_BUCKETS_FROM": str(diabetes_model)}
    with (
        serving(diabetes_model, "--name", "diabetes") as stable,
        serving(own, "--name", "diabetes", env=env) as canary,
        serving(own, "--name", "diabetes") as alone,
    ):
        assert value_buckets(alone) == ["0.0", "1000.0", "2000.0", "+Inf"]
        assert len(value_buckets(stable)) > 4
        assert value_buckets(canary) == value_buckets(stable)


def test_an_unreadable_stable_profile_keeps_the_canary_unready(diabetes_model, tmp_path):
    """Buckets that silently differ from the stable's would skew predictionShift."""
    broken = tmp_path / "stable"
    broken.mkdir()
    (broken / ArtifactLayout.PROFILE).write_text("{not json")
    env = {"KUBELOOP_SERVING_PREDICTION_BUCKETS_FROM": str(broken)}
    server = start_server(diabetes_model, "--name", "diabetes", env=env, ready=False)
    try:
        wait_for(
            "the refused load",
            lambda: (
                server.metric("kubeloop_model_loads_total", model="diabetes", result="failure") == 1
            ),
        )
        with server.client() as http:
            assert http.get("/v2/health/ready").status_code == 503
        assert "prediction_buckets_from" in server.log
    finally:
        server.stop()


def test_mirrored_requests_a_canary_fails_count_as_its_server_errors(
    cancer_model, cancer_rows, tmp_path
):
    """Shadow mode: the stable model answers anyway; the canary's 5xx is counted by kind."""
    with (
        failing_canary(502) as url,
        serving(
            cancer_model,
            "--name",
            "cancer",
            "--canary-url",
            url,
            "--canary-weight",
            "100",
            "--shadow",
            env={"KUBELOOP_SERVING_CANARY_VERSION": "5"},
        ) as stable,
    ):
        stable_answers(stable, body(cancer_rows.iloc[:1]), 4)
        wait_for(
            "4 mirrored requests counted",
            lambda: (
                stable.metric(
                    "kubeloop_canary_requests_total",
                    version="5",
                    mode="shadow",
                    outcome="server_error",
                )
                == 4
            ),
        )
