"""Hostile clients against a live server: every bad body is a 4xx counted as one, a bad
request never fails another in its micro-batch, request metadata is bounded, and an
error never costs the client its keep-alive connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving_helpers import Server, serving

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT

V2_PATH = "/v2/models/mixed/infer"
V1_PATH = "/v1/models/mixed:predict"
JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def mixed(mixed_model: Path) -> Iterator[Server]:
    with serving(mixed_model, "--name", "mixed") as server:
        yield server


def v2_text(age: str = "30", income: str = "40", city: str = '"rome"', rid: str = '"r"') -> bytes:
    """A one-row V2 request spelled by hand, so each value can be any JSON text."""
    return (
        f'{{"id": {rid}, "inputs": ['
        f'{{"name": "age", "datatype": "FP64", "shape": [1], "data": [{age}]}},'
        f'{{"name": "income", "datatype": "FP64", "shape": [1], "data": [{income}]}},'
        f'{{"name": "city", "datatype": "BYTES", "shape": [1], "data": [{city}]}}]}}'
    ).encode()


def v2_body(age: float, city: str, **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "age", "shape": [1], "datatype": "FP32", "data": [age]},
            {"name": "income", "shape": [1], "datatype": "FP32", "data": [50.0]},
            {"name": "city", "shape": [1], "datatype": "BYTES", "data": [city]},
        ],
        **extra,
    }


# (path, body, what the error says): each a client mistake a hostile client sends
HOSTILE = {
    "surrogate_in_bytes": (V2_PATH, v2_text(city='"\\ud800"'), "lone UTF-16 surrogate"),
    "surrogate_with_nan": (V2_PATH, v2_text(income="NaN", city='"\\udc00"'), "surrogate"),
    "surrogate_in_id": (V2_PATH, v2_text(rid='"\\ud800"'), "lone UTF-16 surrogate"),
    "surrogate_in_name": (
        V2_PATH,
        v2_text().replace(b'"age"', b'"\\ud800"'),
        "lone UTF-16 surrogate",
    ),
    "surrogate_in_v1": (V1_PATH, b'{"instances": [[30, NaN, "\\ud800"]]}', "surrogate"),
    "v1_nested_number": (
        V1_PATH,
        b'{"instances": [[[1, 2], 40, "rome"]]}',
        "feature 'age' is a number but row 0 is [1, 2]",
    ),
    "v1_nested_object": (
        V1_PATH,
        b'{"instances": [{"age": {"x": 1}, "income": 1, "city": "rome"}]}',
        "feature 'age' is a number but row 0 is {'x': 1}",
    ),
    "v1_ragged": (
        V1_PATH,
        b'{"instances": [[1, 40, "rome"], [[1], 40, "rome"]]}',
        "feature 'age' is a number but row 1 is [1]",
    ),
    "fp32_overflow": (V2_PATH, v2_text(age="1e300"), "outside the range of FP32"),
    "huge_integer": (V2_PATH, v2_text(age=str(10**39)), "outside the range of FP32"),
    "v1_overflow": (V1_PATH, b'{"instances": [[1e300, 40, "rome"]]}', "outside the range of FP32"),
    "infinity": (V2_PATH, v2_text(age="Infinity"), "input 'age' is infinite at row 0"),
    "null": (V2_PATH, v2_text(age="null"), "value 0 is null, not a number"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_values_are_a_400_naming_the_problem(mixed, case):
    path, body, needle = HOSTILE[case]
    with mixed.client() as http:
        r = http.post(path, content=body, headers=JSON_TYPE)
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"], r.json()
        assert http.post(V2_PATH, json=v2_body(30, "rome")).status_code == 200


def test_no_request_was_a_server_fault(mixed):
    for protocol in ("v1", "v2"):
        assert mixed.metric("kubeloop_requests_total", protocol=protocol, code="500") is None
    assert mixed.metric("kubeloop_requests_total", protocol="v2", code="400")
    assert "Traceback" not in mixed.log


def answer(doc: dict[str, object]) -> tuple[object, object]:
    """The label and probabilities of a one-row V2 answer."""
    outputs = {o["name"]: o["data"] for o in doc["outputs"]}  # type: ignore[attr-defined]
    return outputs[LABEL_OUTPUT], outputs[PROBA_OUTPUT]


def test_bad_requests_never_fail_good_ones_in_the_same_batch(mixed):
    cities = ["rome", "oslo", "paris"]
    good = [v2_body(20 + i * 0.5, cities[i % 3], id=f"good-{i}") for i in range(120)]
    with mixed.client() as http:  # each good request's answer when it runs alone
        expected = [answer(http.post(V2_PATH, json=b).json()) for b in good]
    bad = [v2_text(city='"\\ud800"'), v2_text(age="1e300"), v2_text(city="[1]")] * 20

    async def storm() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=mixed.url, timeout=60, limits=limits) as c:
            goods = [c.post(V2_PATH, json=b) for b in good]
            bads = [c.post(V2_PATH, content=b, headers=JSON_TYPE) for b in bad]
            replies = await asyncio.gather(*goods, *bads)
        return replies[: len(good)], replies[len(good) :]

    good_replies, bad_replies = asyncio.run(storm())
    assert [r.status_code for r in good_replies] == [200] * len(good)
    for reply, (label, proba) in zip(good_replies, expected, strict=True):
        got_label, got_proba = answer(reply.json())
        assert got_label == label
        assert got_proba == pytest.approx(proba, abs=1e-5)  # batched float32 sums
    assert [r.json()["id"] for r in good_replies] == [f"good-{i}" for i in range(120)]
    assert {r.status_code for r in bad_replies} == {400}
    # and they did share model calls: some batch held more than one row
    one_row = mixed.metric("kubeloop_batch_size_bucket", le="1.0")
    assert one_row is not None
    assert one_row < (mixed.metric("kubeloop_batch_size_count") or 0)


def test_request_metadata_is_bounded(mixed):
    with mixed.client() as http:
        r = http.post(V2_PATH, json=v2_body(30, "rome", id="i" * 256))
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "i" * 256
        r = http.post(V2_PATH, json=v2_body(30, "rome", id="i" * 4 * 1024 * 1024))
        assert r.status_code == 400
        assert "at most 256 are allowed (KUBELOOP_SERVING_MAX_REQUEST_ID)" in r.json()["error"]
        assert len(r.content) < 1024  # the id is not echoed
        r = http.post(V1_PATH, json={"instances": [[30, 40, "rome"]]},
                      headers={"x-request-id": "h" * 257})  # fmt: skip
        assert r.status_code == 400
        assert "x-request-id header has 257 characters" in r.json()["error"]
        many = {f"k{i}": i for i in range(65)}
        r = http.post(V2_PATH, json=v2_body(30, "rome", parameters=many))
        assert r.status_code == 400
        assert "MAX_PARAMETER_KEYS" in r.json()["error"]
        deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
        r = http.post(V2_PATH, json=v2_body(30, "rome", parameters=deep))
        assert r.status_code == 400
        assert "deeper than 4 levels" in r.json()["error"]


def test_metadata_limits_come_from_the_settings(mixed_model):
    env = {"KUBELOOP_SERVING_MAX_REQUEST_ID": "8"}
    with serving(mixed_model, "--name", "mixed", env=env) as server, server.client() as http:
        assert http.post(V2_PATH, json=v2_body(30, "rome", id="12345678")).status_code == 200
        r = http.post(V2_PATH, json=v2_body(30, "rome", id="123456789"))
        assert r.status_code == 400
        assert "at most 8 are allowed" in r.json()["error"]


def client_port(r: httpx.Response) -> int:
    """The client's local port of the connection that carried ``r``."""
    port: int = r.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


# (method, path, body, headers, status): one request of every kind of error
ERRORS = [
    ("POST", V2_PATH, b'{"inputs": [', {}, 400),  # malformed JSON
    ("POST", V2_PATH, v2_text(city='"\\ud800"'), {}, 400),
    ("POST", V2_PATH, v2_text(income="NaN", city='"\\ud800"'), {}, 400),
    ("POST", V2_PATH, v2_text(rid='"\\ud800"'), {}, 400),
    ("POST", V2_PATH, v2_text(age="1e300"), {}, 400),
    ("POST", V1_PATH, b'{"instances": [[[1, 2], 40, "rome"]]}', {}, 400),
    ("POST", V2_PATH, v2_text(), {"inference-header-content-length": "abc"}, 400),
    ("POST", V2_PATH, v2_text(), {"inference-header-content-length": "99999"}, 400),
    ("POST", V2_PATH, v2_text(rid='"' + "i" * 300 + '"'), {}, 400),
    ("POST", V1_PATH, b'{"instances": [[30, 40, "rome"]]}', {"x-request-id": "h" * 300}, 400),
    ("POST", "/v2/models/nope/infer", v2_text(), {}, 404),
    ("POST", "/v2/models/mixed/versions/9/infer", v2_text(), {}, 404),
    ("POST", "/v2/models/mixed/feedback", b'{"id": 1}', {}, 400),
    ("POST", "/v2/models/mixed/feedback", b'{"id": "\\ud800", "truth": 1}', {}, 400),
    ("GET", "/v2/nothing-here", b"", {}, 404),
    ("DELETE", "/v2/models/mixed", b"", {}, 405),
    ("POST", V2_PATH, b"x" * (9 * 1024 * 1024), {}, 413),  # over max_body_bytes
]


def test_errors_never_break_keep_alive(mixed):
    with httpx.Client(base_url=mixed.url, timeout=30, limits=httpx.Limits(max_connections=1)) as c:
        first = c.post(V2_PATH, json=v2_body(30, "rome"))
        assert first.status_code == 200
        port = client_port(first)
        for method, path, body, headers, status in ERRORS:
            r = c.request(method, path, content=body, headers={**JSON_TYPE, **headers})
            assert r.status_code == status, (path, body[:80], r.text)
            assert "error" in r.json() or status == 405
            assert "close" not in r.headers.get("connection", ""), (path, body[:80])
            assert client_port(r) == port, f"new connection after {path} {body[:80]!r}"
        last = c.post(V2_PATH, json=v2_body(30, "rome"))
        assert last.status_code == 200
        assert client_port(last) == port


def test_a_body_declared_far_over_the_limit_closes_the_connection(mixed):
    # nothing is read of a body over twice max_body_bytes: the connection is closed
    host, port = mixed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {V2_PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {64 * 1024 * 1024}\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413")
    assert b"connection: close" in head
