"""The canary analysis' Prometheus client against a real HTTP server on loopback that
answers the query API behind a bearer token (as kube-rbac-proxy puts one in front of
Prometheus; Prometheus itself takes no bearer tokens, so the cluster tier's real Prometheus
cannot check this): the token from its file is sent, answers parsed, errors kept per query."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from kubeloop.operator.analysis import Query
from kubeloop.operator.prometheus import PrometheusClient
from kubeloop.operator.settings import OperatorSettings

TOKEN = "s3cret-reader"


class TokenGuardedQueryAPI(BaseHTTPRequestHandler):
    """Answers /api/v1/query like Prometheus: 401 without the token, an error for `bad`."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        expr = parse_qs(url.query)["query"][0]
        type(self).seen.append((url.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"status": "error", "error": "unauthorized"})
        elif expr == "bad":
            self._send(400, {"status": "error", "errorType": "bad_data", "error": "parse error"})
        else:
            result = [
                {"metric": {"class": "0"}, "value": [1, "30"]},
                {"metric": {"class": "1"}, "value": [1, "10"]},
            ]
            self._send(
                200, {"status": "success", "data": {"resultType": "vector", "result": result}}
            )

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prom_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenGuardedQueryAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_queries_carry_the_token_from_its_file(prom_url: str, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = OperatorSettings(prometheus_url=prom_url, prometheus_bearer_token_file=token)
    answers = PrometheusClient(settings).query(
        {"split": Query("sum by (class) (x)", by="class"), "bad": Query("bad")}
    )
    assert answers.vectors["split"] == {"0": 30.0, "1": 10.0}
    assert answers.vectors["bad"] is None
    assert "bad_data: parse error" not in answers.errors.get("split", "")
    assert "parse error" in answers.errors["bad"]
    assert TokenGuardedQueryAPI.seen[-1] == ("/api/v1/query", f"Bearer {TOKEN}")


def test_without_the_token_every_query_is_an_error(prom_url: str, tmp_path: Path):
    unauthorised = PrometheusClient(OperatorSettings(prometheus_url=prom_url)).query(
        {"q": Query("x")}
    )
    assert "unauthorized" in unauthorised.errors["q"]
    missing = OperatorSettings(
        prometheus_url=prom_url, prometheus_bearer_token_file=tmp_path / "absent"
    )
    answers = PrometheusClient(missing).query({"q": Query("x")})
    assert answers.errors["q"].startswith("token file:")
