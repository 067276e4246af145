"""The README's local quick start, run as a new user would: snapshot, train, serve, predict,
score a table."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata

ROOT = Path(__file__).resolve().parents[2]
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))


def kubeloop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBELOOP, *args], capture_output=True, text=True, timeout=300, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_quick_start(tmp_path):
    data = str(ROOT / "examples" / "data" / "breast-cancer.csv")
    snap = kubeloop(
        "snapshot", "--source", data, "--format", "csv", "--out", str(tmp_path / "datasets")
    )
    assert snap.returncode == 0, snap.stderr
    assert json.loads(snap.stdout)["rows"] == 569
    model = tmp_path / "model"
    trained = kubeloop(
        "train",
        "--spec",
        str(ROOT / "examples" / "trainingjob.yaml"),
        "--data",
        data,
        "--out",
        str(model),
    )
    assert trained.returncode == 0, trained.stderr
    assert sorted(p.name for p in model.iterdir()) == sorted(
        [ArtifactLayout.CARD, ArtifactLayout.METADATA, ArtifactLayout.MODEL, ArtifactLayout.PROFILE]
    )
    port = free_port()
    server = subprocess.Popen(
        [KUBELOOP, "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.2)
        body = json.loads((ROOT / "examples" / "requests" / "breast-cancer.json").read_text())
        reply = httpx.post(f"{url}/v1/models/breast-cancer:predict", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["predictions"]) == len(body["instances"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    scored = tmp_path / "scored.parquet"
    batch = kubeloop("predict", "--model", str(model), "--data", data, "--out", str(scored))
    assert batch.returncode == 0, batch.stderr
    assert json.loads(batch.stdout)["rows"] == 569
    assert scored.stat().st_size > 0


@pytest.mark.parametrize(
    ("manifest", "framework"),
    [("trainingjob-xgboost.yaml", "XGBoost"), ("trainingjob-lightgbm.yaml", "LightGBM")],
)
def test_each_framework_example_trains_as_the_readme_shows(tmp_path, manifest, framework):
    """``kubeloop train --spec examples/trainingjob-<framework>.yaml`` passes its gate and
    the parity check, and its card names the library's own importance."""
    model = tmp_path / "model"
    trained = kubeloop(
        "train",
        "--spec",
        str(ROOT / "examples" / manifest),
        "--data",
        str(ROOT / "examples" / "data" / "breast-cancer.csv"),
        "--out",
        str(model),
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["status"] == "succeeded", summary
    meta = ModelMetadata.model_validate_json((model / ArtifactLayout.METADATA).read_text())
    assert meta.parity is not None
    assert meta.parity.passed
    assert meta.gate is not None
    assert meta.gate.passed
    card = (model / ArtifactLayout.CARD).read_text()
    assert f"## Feature importance ({framework}: total gain" in card
