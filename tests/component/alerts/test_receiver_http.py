"""The alert receiver's transport over real HTTP on loopback: auth, size limit, validation.

The receiver runs as the operator runs it (aiohttp on an event loop); what the
retrain policy does with valid payloads is covered by the cluster tests, so
here ``process`` records what reached it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from kubeloop.operator.alerts.payload import WebhookPayload
from kubeloop.operator.alerts.receiver import HEALTH_PATH, PATH, TokenSource, make_app

TOKEN = "s3cret-token"
LIMIT = 64 * 1024


class Receiver:
    """make_app() served on 127.0.0.1 from a background event loop."""

    def __init__(self, tokens: TokenSource, fail: bool = False) -> None:
        self.received: list[WebhookPayload] = []
        self.fail = fail
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(tokens), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _process(self, payload: WebhookPayload) -> list[dict[str, Any]]:
        if self.fail:
            raise RuntimeError("API server unreachable")
        self.received.append(payload)
        return [{"fingerprint": a.fingerprint, "result": "seen"} for a in payload.alerts]

    async def _start(self, tokens: TokenSource) -> web.AppRunner:
        runner = web.AppRunner(make_app(tokens, self._process, LIMIT), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(TokenSource(TOKEN))
    yield r
    r.close()


def payload(n: int = 1, status: str = "firing") -> dict:
    return {
        "version": "4",
        "status": status,
        "receiver": "kubeloop",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": "KubeloopDataDrift",
                    "namespace": "ml",
                    "model_deployment": "iris",
                },
                "annotations": {"value": "0.5"},
                "startsAt": "2024-05-01T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": f"{i:016x}",
            }
            for i in range(n)
        ],
    }


def post(r: Receiver, body: Any, token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes | Iterator) else json.dumps(body).encode()
    return httpx.post(r.url + PATH, content=content, headers=headers, timeout=10, **kwargs)


def test_a_valid_payload_reaches_the_policy_and_is_acknowledged(receiver):
    response = post(receiver, payload(3))
    assert response.status_code == 200, response.text
    assert [x["result"] for x in response.json()["results"]] == ["seen"] * 3
    (got,) = receiver.received
    assert [a.deployment for a in got.alerts] == [("ml", "iris")] * 3


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_without_the_right_bearer_token_401(receiver, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(receiver, payload(), token=None, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert receiver.received == []


def test_auth_is_checked_before_the_body(receiver):
    assert post(receiver, b"x" * (LIMIT + 1), token="wrong").status_code == 401
    assert post(receiver, b"{broken", token=None).status_code == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{broken", "Invalid JSON"),
        ({**payload(), "version": "3"}, "version"),
        ({**payload(), "alerts": [{"status": "firing"}]}, "alerts.0"),
        ({**payload(), "alerts": "none"}, "alerts"),
    ],
)
def test_bad_payloads_400_with_the_reason(receiver, body, reason):
    response = post(receiver, body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert receiver.received == []


def test_bodies_over_the_limit_413_by_length_or_by_stream(receiver):
    big = json.dumps({**payload(), "padding": "x" * LIMIT}).encode()
    assert post(receiver, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(LIMIT // 1024 + 2):
            yield b" " * 1024

    response = post(receiver, chunks())
    assert response.status_code == 413
    assert receiver.received == []


def test_just_under_the_limit_is_read(receiver):
    body = json.dumps(payload()).encode()
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    assert post(receiver, padded).status_code == 200


def test_a_policy_failure_is_a_500_so_alertmanager_retries():
    r = Receiver(TokenSource(TOKEN), fail=True)
    try:
        response = post(r, payload())
        assert response.status_code == 500
        assert "API server unreachable" in response.json()["error"]
    finally:
        r.close()


def test_only_post_on_the_alerts_path_and_health_is_open(receiver):
    assert httpx.get(receiver.url + PATH, timeout=10).status_code == 405
    assert httpx.get(receiver.url + HEALTH_PATH, timeout=10).json() == {"status": "ok"}


def test_a_token_file_is_reread_when_the_secret_rotates(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("first\n")
    r = Receiver(TokenSource(path=path))
    try:
        assert post(r, payload(), token="first").status_code == 200
        path.write_text("second")
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
        assert post(r, payload(), token="first").status_code == 401
        assert post(r, payload(), token="second").status_code == 200
        path.unlink()  # a missing Secret accepts no one
        assert post(r, payload(), token="second").status_code == 401
    finally:
        r.close()


def test_an_empty_token_file_accepts_no_one(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("\n")
    tokens = TokenSource(path=path)
    assert tokens.configured
    assert not tokens.accepts("Bearer ")
    assert not tokens.accepts("Bearer \n")
