"""`kubeloop serve` of a model in an S3 store (a real server, tests/s3_server.py): the
registered digest verified on the bytes read from the store, the same answers as the
model served from disk, and wrong credentials leaving the server unready, the log naming
the model's URI but never the secret. The same model served from a GCS emulator
(tests/gcs_server.py; anonymous) and an Azure Blob emulator (tests/azure_server.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_helpers import Server, serving, start_server, wait_for

from azure_server import AzuriteServer
from gcs_server import GcsServer
from kubeloop.contracts.artifacts import ArtifactLayout
from s3_server import SECRET_KEY, S3Server

EXPECTED = "KUBELOOP_SERVING_EXPECTED_SHA256"


def upload(store: S3Server | GcsServer | AzuriteServer, model: Path, key: str) -> str:
    """The model folder's files under ``kubeloop-models/<key>/`` of ``store``; their URI."""
    make = store.make_container if isinstance(store, AzuriteServer) else store.make_bucket
    uri = make("kubeloop-models") + f"/{key}"
    fs = store.fs()
    for path in model.iterdir():
        fs.put_file(str(path), f"{uri.split('://', 1)[1]}/{path.name}")
    return uri


def infer(server: Server, rows: pd.DataFrame) -> list[float]:
    data = rows.to_numpy(np.float32).ravel().tolist()
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}]}
    r = httpx.post(f"{server.url}/v2/models/cancer/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return [float(v) for out in r.json()["outputs"] for v in out["data"]]


@pytest.mark.parametrize("store", ["s3", "gcs", "azure"])
def test_serves_a_verified_model_from_the_store(store, request, cancer_model, cancer_rows):
    server = request.getfixturevalue(store)
    uri = upload(server, cancer_model, "cancer-1")
    sha = hashlib.sha256((cancer_model / ArtifactLayout.MODEL).read_bytes()).hexdigest()
    rows = cancer_rows.head(5)
    with serving(cancer_model, "--name", "cancer") as local:
        expected = infer(local, rows)
    env = {**server.env(), EXPECTED: sha}
    with serving(uri, "--name", "cancer", env=env) as remote:
        assert infer(remote, rows) == expected


def test_wrong_credentials_leave_it_unready_without_the_secret(s3, cancer_model):
    uri = upload(s3, cancer_model, "cancer-2")
    env = s3.env(secret="Wrong-Secret-Value")
    server = start_server(uri, "--name", "cancer", env=env, ready=False)
    try:
        failed = f"model load from {uri} failed"
        wait_for(f"{failed!r} in the log", lambda: failed in server.log, timeout=120)
        assert not server.ready()
    finally:
        server.stop()
    assert "Wrong-Secret-Value" not in server.log
    assert SECRET_KEY not in server.log


def version_of(server: Server) -> str:
    return str(httpx.get(f"{server.url}/v2/models/cancer", timeout=10).json()["versions"][0])


def test_a_model_replaced_in_s3_is_reloaded(s3, cancer_model, other_cancer_model):
    """The reload watcher sees an object store's change (ETag, size) as it sees a file's."""
    uri = upload(s3, cancer_model, "cancer-3")
    env = {**s3.env(), "KUBELOOP_SERVING_RELOAD_INTERVAL": "0.2"}
    with serving(uri, "--name", "cancer", env=env) as server:
        before = version_of(server)
        fs = s3.fs()
        key = uri.removeprefix("s3://")
        for name in (ArtifactLayout.MODEL, ArtifactLayout.PROFILE, ArtifactLayout.METADATA):
            fs.put_file(str(other_cancer_model / name), f"{key}/{name}")  # model.json last
        wait_for("the new version to be served", lambda: version_of(server) != before)
        assert server.ready()
