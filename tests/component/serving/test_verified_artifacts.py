"""Only verified bytes are served, and a refused load says why without leaking.

``KUBELOOP_SERVING_EXPECTED_SHA256`` (the registered digest) is checked at the first
load and at every reload; the reload watcher notices a ``model.onnx`` replaced alone;
and no answer about a broken artifact carries the model directory's path or a piece
of a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from serving_helpers import Server, serving, start_server, wait_for

from kubeloop.contracts.artifacts import ArtifactLayout

MODEL = ArtifactLayout.MODEL
META = ArtifactLayout.METADATA
PROFILE = ArtifactLayout.PROFILE
EXPECTED = "KUBELOOP_SERVING_EXPECTED_SHA256"
FAST_RELOAD = {"KUBELOOP_SERVING_RELOAD_INTERVAL": "0.2"}
#: a string planted in broken files: no answer may quote it
MARKER = "planted-7c1e"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace(src: Path, dst: Path) -> None:
    """Swap a file in atomically, as a careful writer does."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def infer(server: Server, rows) -> httpx.Response:
    data = rows.to_numpy(np.float32).ravel().tolist()
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}]}
    return httpx.post(f"{server.url}/v2/models/cancer/infer", json=body)


def index(server: Server) -> list[dict[str, str]]:
    r = httpx.post(f"{server.url}/v2/repository/index")
    assert r.status_code == 200
    result: list[dict[str, str]] = r.json()
    return result


def version_of(server: Server) -> str:
    return str(httpx.get(f"{server.url}/v2/models/cancer").json()["versions"][0])


def test_a_registered_digest_mismatch_at_start_never_becomes_ready(cancer_model, tmp_path):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    server = start_server(model, "--name", "cancer", env={EXPECTED: "a" * 64}, ready=False)
    try:
        wait_for(
            "the refused load to be counted",
            lambda: server.metric("kubeloop_model_digest_mismatches_total", model="cancer") == 1,
        )
        r = httpx.get(f"{server.url}/v2/health/ready")
        assert r.status_code == 503
        assert "registered" in r.json()["error"]
        assert "a" * 64 in r.json()["error"]
        (entry,) = index(server)
        assert entry["state"] == "UNAVAILABLE"
        assert "registered" in entry["reason"]
        assert "refusing to serve it" in server.log
        assert server.metric("kubeloop_model_loads_total", model="cancer", result="success") is None
    finally:
        server.stop()


def test_the_registered_digest_serves_and_a_reload_to_other_bytes_is_refused(
    cancer_model, other_cancer_model, cancer_rows, tmp_path
):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    env = {**FAST_RELOAD, EXPECTED: digest(model / MODEL)}
    with serving(model, "--name", "cancer", env=env) as server:
        before = version_of(server)
        # a consistent new model (model.json matches), but not the registered bytes
        for name in (MODEL, PROFILE, META):
            replace(other_cancer_model / name, model / name)
        wait_for(
            "the reload to be refused",
            lambda: server.metric("kubeloop_model_digest_mismatches_total", model="cancer") == 1,
        )
        assert server.metric("kubeloop_model_loads_total", model="cancer", result="failure") == 1
        assert infer(server, cancer_rows.iloc[:3]).status_code == 200
        assert version_of(server) == before
        assert server.ready()
        served, refused = index(server)
        assert served == {"name": "cancer", "version": before, "state": "READY", "reason": ""}
        assert refused["state"] == "UNAVAILABLE"
        assert "registered" in refused["reason"]
        assert "refusing to serve it" in server.log
        # the same refused content is not retried on every tick
        assert server.metric("kubeloop_model_loads_total", model="cancer", result="failure") == 1


def test_a_model_onnx_replaced_alone_is_noticed(cancer_model, other_cancer_model, tmp_path):
    model = shutil.copytree(cancer_model, tmp_path / "m")
    original = tmp_path / "original.onnx"
    shutil.copyfile(model / MODEL, original)
    with serving(model, "--name", "cancer", env=FAST_RELOAD) as server:
        before = version_of(server)
        replace(other_cancer_model / MODEL, model / MODEL)  # model.json untouched
        wait_for(
            "the new model.onnx to be checked and refused",
            lambda: server.metric("kubeloop_model_digest_mismatches_total", model="cancer") == 1,
        )
        assert version_of(server) == before
        assert [e["state"] for e in index(server)] == ["READY", "UNAVAILABLE"]
        # the right bytes back (a new file, same content): loaded again, index clean
        replace(original, model / MODEL)
        wait_for(
            "the restored model.onnx to be loaded",
            lambda: (
                server.metric("kubeloop_model_loads_total", model="cancer", result="success") == 2
            ),
        )
        assert index(server) == [
            {"name": "cancer", "version": before, "state": "READY", "reason": ""}
        ]


def _bad_json(model: Path, _: Path) -> None:
    (model / META).write_text('{"name": "' + MARKER + '", "sha256": ')


def _bad_metadata(model: Path, _: Path) -> None:
    meta = json.loads((model / META).read_text())
    meta["task"] = MARKER
    meta["inputs"] = [{"name": MARKER}]
    (model / META).write_text(json.dumps(meta))


def _bad_profile(model: Path, _: Path) -> None:
    (model / PROFILE).write_text('{"features": "' + MARKER + '"')


def _missing_onnx(model: Path, _: Path) -> None:
    (model / MODEL).unlink()


def _wrong_digest(model: Path, _: Path) -> None:
    (model / MODEL).write_bytes(MARKER.encode() * 10)


def _not_onnx(model: Path, _: Path) -> None:
    """Bytes that match model.json's digest but are no model."""
    (model / MODEL).write_bytes(MARKER.encode() * 10)
    meta = json.loads((model / META).read_text())
    meta["sha256"] = digest(model / MODEL)
    (model / META).write_text(json.dumps(meta))


BREAKAGES: list[Callable[[Path, Path], None]] = [
    _bad_json,
    _bad_metadata,
    _bad_profile,
    _missing_onnx,
    _wrong_digest,
    _not_onnx,
]


def _answers(server: Server, http: httpx.Client) -> list[str]:
    """Every answer that can carry a load failure's reason."""
    return [
        http.get("/v2/health/ready").text,
        http.get("/v2/models/cancer/ready").text,
        http.post("/v2/repository/index").text,
        http.get("/v2/models/cancer").text,
        http.get("/v1/models/cancer").text,
    ]


def _assert_no_leak(texts: list[str], model: Path, what: str) -> None:
    for text in texts:
        assert str(model) not in text, (what, text)
        assert model.name not in text, (what, text)
        assert MARKER not in text, (what, text)


def test_broken_artifacts_never_leak_paths_or_content(cancer_model, other_cancer_model, tmp_path):
    """A reload of each broken artifact answers a reason (400), keeps the model serving,
    and no answer names the directory or quotes a file; the log keeps the details."""
    model = tmp_path / "store-9f3b2a"
    shutil.copytree(cancer_model, model)
    env = {"KUBELOOP_SERVING_RELOAD_INTERVAL": "0", "KUBELOOP_SERVING_MODEL_CONTROL": "true"}
    with serving(model, "--name", "cancer", env=env) as server, server.client() as http:
        for break_it in BREAKAGES:
            shutil.rmtree(model)
            shutil.copytree(cancer_model, model)
            break_it(model, other_cancer_model)
            r = http.post("/v2/repository/models/cancer/load")
            assert r.status_code == 400, (break_it.__name__, r.text)
            assert r.json()["error"].startswith("model load failed: "), r.text
            assert http.get("/v2/health/ready").status_code == 200
            _assert_no_leak([r.text, *_answers(server, http)], model, break_it.__name__)
        assert str(model) in server.log  # details stay in the log
        assert MARKER in server.log


def test_a_broken_first_load_never_leaks_either(cancer_model, other_cancer_model, tmp_path):
    for break_it in BREAKAGES:
        model = tmp_path / f"store-{break_it.__name__}"
        shutil.copytree(cancer_model, model)
        break_it(model, other_cancer_model)
        server = start_server(model, "--name", "cancer", ready=False)
        try:
            wait_for(
                f"the failed load ({break_it.__name__})",
                lambda s=server: (
                    s.metric("kubeloop_model_loads_total", model="cancer", result="failure") == 1
                ),
            )
            with server.client() as http:
                assert http.get("/v2/health/ready").status_code == 503
                _assert_no_leak(_answers(server, http), model, break_it.__name__)
        finally:
            server.stop()
