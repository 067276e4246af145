"""Feedback for a request another replica answered reaches it: two real ``kubeloop serve``
processes, each told the other is a peer, over loopback.

A label posted to either pod is scored by the pod that made the prediction; an id no pod
knows stays unknown; a forwarded call is never forwarded again; a pod that is down makes
the forwarded labels unknown, never the call fail.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest
from serving_helpers import Server, start_server

TOKEN = "peer-token-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pods(cancer_model: Path, tmp_path: Path) -> Iterator[list[Server]]:
    """Two replicas of one deployment: each lists both addresses, its own left out."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    ports = [free_port(), free_port()]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    env = {"KUBELOOP_SERVING_FEEDBACK_PEERS": peers, "KUBELOOP_SERVING_POD_IP": "127.0.0.1"}
    with ExitStack() as stack:
        servers = []
        for port in ports:
            server = start_server(
                cancer_model, "--name", "cancer", "--port", str(port),
                "--token-file", str(token), env=env,
            )  # fmt: skip
            stack.callback(server.stop)
            servers.append(server)
        yield servers


def predict(server: Server, rows: pd.DataFrame, prefix: str) -> list[int]:
    """One request per row, id ``<prefix>-<i>``; the labels the model gave."""
    labels = []
    with server.client() as http:
        for i in range(len(rows)):
            part = rows.iloc[i : i + 1]
            body = {
                "id": f"{prefix}-{i}",
                "inputs": [{"name": "x", "shape": list(part.shape), "datatype": "FP32",
                            "data": part.to_numpy("float32").ravel().tolist()}],
            }  # fmt: skip
            answer = http.post("/v2/models/cancer/infer", json=body)
            assert answer.status_code == 200, answer.text
            label = next(o for o in answer.json()["outputs"] if o["name"] == "label")
            labels.append(int(label["data"][0]))
    return labels


def post(server: Server, items: list[dict], headers: dict[str, str] = AUTH) -> dict:
    with server.client() as http:
        answer = http.post("/v2/models/cancer/feedback", json={"feedback": items}, headers=headers)
    assert answer.status_code == 200, answer.text
    doc: dict = answer.json()
    return doc


def test_a_label_reaches_the_pod_that_answered(pods, cancer_rows):
    a, b = pods
    on_a = predict(a, cancer_rows.iloc[:10], "a")
    on_b = predict(b, cancer_rows.iloc[10:20], "b")
    items = [{"id": f"a-{i}", "truth": t} for i, t in enumerate(on_a)]
    items += [{"id": f"b-{i}", "truth": 1 - t} for i, t in enumerate(on_b)]  # all wrong
    items.append({"id": "never-seen", "truth": 1})
    doc = post(a, items)
    assert (doc["matched"], doc["unknown"], doc["unknown_ids"]) == (20, 1, ["never-seen"])
    assert (doc["peers"], doc["peers_failed"]) == (1, 0)
    # each pod scored its own predictions: the metric stays where the prediction was made
    assert a.metric("kubeloop_online_metric", model="cancer", metric="accuracy") == 1.0
    assert b.metric("kubeloop_online_metric", model="cancer", metric="accuracy") == 0.0
    assert a.metric("kubeloop_online_metric_rows", model="cancer") == 10
    assert b.metric("kubeloop_online_metric_rows", model="cancer") == 10

    # the same labels again, through the other pod: known everywhere, counted nowhere twice
    again = post(b, items)
    assert (again["matched"], again["unknown"]) == (0, 1)
    assert b.metric("kubeloop_online_metric_rows", model="cancer") == 10


def test_a_forwarded_call_is_not_forwarded_again_and_needs_the_token(pods, cancer_rows):
    a, b = pods
    on_b = predict(b, cancer_rows.iloc[:3], "b")
    items = [{"id": f"b-{i}", "truth": t} for i, t in enumerate(on_b)]
    # a caller claiming the call was forwarded only keeps it on the pod it reached
    doc = post(a, items, {**AUTH, "X-Kubeloop-Forwarded": "1"})
    assert (doc["matched"], doc["unknown"], doc["matched_ids"]) == (0, 3, [])
    assert b.metric("kubeloop_online_metric_rows", model="cancer") == 0
    with a.client() as http:
        refused = http.post("/v2/models/cancer/feedback", json={"feedback": items})
    assert refused.status_code == 401
    assert post(a, items)["matched"] == 3  # with the token, forwarded with it


def test_a_pod_that_is_down_leaves_its_labels_unknown(pods, cancer_rows):
    a, b = pods
    on_b = predict(b, cancer_rows.iloc[:2], "b")
    b.stop()
    doc = post(a, [{"id": f"b-{i}", "truth": t} for i, t in enumerate(on_b)])
    assert (doc["matched"], doc["unknown"]) == (0, 2)
    assert (doc["peers"], doc["peers_failed"]) == (1, 1)
