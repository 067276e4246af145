"""The write routes need the bearer token; model control is off unless enabled.

A real ``kubeloop serve`` with ``--token-file``: feedback, repository load and unload
answer 401 without a token (with the ``WWW-Authenticate: Bearer`` challenge), 403 with
a wrong one and work with the right one; everything else stays open.
"""

from __future__ import annotations

import subprocess

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serving_helpers import KUBELOOP, serving
from tritonclient.utils import InferenceServerException

TOKEN = "kH3-q_Zt9wVb0rXy2uLmN4pQ"
FEEDBACK = "/v2/models/cancer/feedback"
LOAD = "/v2/repository/models/cancer/load"
UNLOAD = "/v2/repository/models/cancer/unload"
WRITES = [(FEEDBACK, {"id": "no-such-request", "truth": 1}), (LOAD, None), (UNLOAD, None)]
CONTROL = {"KUBELOOP_SERVING_MODEL_CONTROL": "true", "KUBELOOP_SERVING_RELOAD_INTERVAL": "0"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(f"\n  {TOKEN} \n")  # surrounding whitespace is not part of the token
    return path


@pytest.fixture(scope="module")
def guarded(cancer_model, token_file):
    with serving(cancer_model, "--name", "cancer", "--token-file", str(token_file),
                 env=CONTROL) as server:  # fmt: skip
        yield server


def infer_body(cancer_rows):
    rows = cancer_rows.iloc[:2]
    data = rows.to_numpy(np.float32).ravel().tolist()
    return {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}],
    }


def ensure_loaded(http: httpx.Client) -> None:
    r = http.post(LOAD, headers=bearer(TOKEN))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_no_token_is_401_with_the_bearer_challenge(guarded, path, body):
    with guarded.client() as http:
        for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            r = http.post(path, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Bearer" in r.json()["error"]
            assert TOKEN not in r.text


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_a_wrong_token_is_403(guarded, path, body):
    with guarded.client() as http:
        for wrong in ("wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
            r = http.post(path, json=body, headers=bearer(wrong))
            assert r.status_code == 403, (wrong, r.text)
            assert TOKEN not in r.text
        ensure_loaded(http)


def test_the_right_token_is_let_through(guarded, cancer_rows):
    with guarded.client() as http:
        assert http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows)).status_code == 200
        r = http.post(FEEDBACK, json={"id": "req-1", "truth": [1, 0]}, headers=bearer(TOKEN))
        assert r.status_code == 200, r.text
        assert r.json()["matched"] == 2
        # the scheme is case-insensitive
        r = http.post(LOAD, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "cancer"


def test_read_routes_stay_open(guarded, cancer_rows):
    with guarded.client() as http:
        for path in (
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/cancer",
            "/v2/models/cancer/ready",
            "/v1/models",
            "/v1/models/cancer",
            "/metrics",
        ):
            assert http.get(path).status_code == 200, path
        assert http.post("/v2/repository/index").status_code == 200
        assert http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows)).status_code == 200
        v1 = {"instances": cancer_rows.iloc[:2].to_numpy().tolist()}
        assert http.post("/v1/models/cancer:predict", json=v1).status_code == 200  # fmt: skip


def test_unload_then_load_with_the_official_client(guarded, cancer_rows):
    client = triton.InferenceServerClient(guarded.url.removeprefix("http://"))
    try:
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.unload_model("cancer")
        assert client.is_model_ready("cancer")
        client.unload_model("cancer", headers=bearer(TOKEN))
        assert not client.is_server_ready()
        assert not client.is_model_ready("cancer")
        (entry,) = client.get_model_repository_index()
        assert entry == {"name": "cancer", "state": "UNAVAILABLE", "reason": "model unloaded"}
        with guarded.client() as http:
            r = http.post("/v2/models/cancer/infer", json=infer_body(cancer_rows))
            assert r.status_code == 503
            assert http.get("/v2/health/ready").json()["error"] == "not ready: model unloaded"
            # an unloaded model stays unloaded: a second unload is fine, other names are not
            assert http.post(UNLOAD, headers=bearer(TOKEN)).status_code == 200
            r = http.post("/v2/repository/models/other/unload", headers=bearer(TOKEN))
            assert r.status_code == 404
            r = http.post("/v2/repository/models/other/load", headers=bearer(TOKEN))
            assert r.status_code == 404
        client.load_model("cancer", headers=bearer(TOKEN))
        assert client.is_server_ready()
        assert client.is_model_ready("cancer")
        (entry,) = client.get_model_repository_index()
        assert entry["state"] == "READY"
    finally:
        client.close()


def test_model_control_is_off_by_default_even_with_the_token(cancer_model, token_file):
    with (
        serving(cancer_model, "--name", "cancer", "--token-file", str(token_file)) as server,
        server.client() as http,
    ):
        for path in (LOAD, UNLOAD):
            r = http.post(path, headers=bearer(TOKEN))
            assert r.status_code == 403
            assert "model control disabled" in r.json()["error"]
            assert http.post(path).status_code == 401  # who asks is checked first
        assert http.post(FEEDBACK, json=WRITES[0][1], headers=bearer(TOKEN)).status_code == 200
        assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (" \n\t ", "empty"),
        ("has a space-in-the-middle", "printable ASCII"),
        (None, "cannot read"),
    ],
)
def test_an_unusable_token_file_stops_the_start(cancer_model, tmp_path, content, says):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    result = subprocess.run(
        [str(KUBELOOP), "serve", "--model", str(cancer_model), "--port", "0",
         "--host", "127.0.0.1", "--token-file", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "KUBELOOP_SERVING_TOKEN_FILE" in result.stderr
    assert says in result.stderr
    assert "space-in-the-middle" not in result.stderr + result.stdout
    assert "Uvicorn running" not in result.stderr + result.stdout
