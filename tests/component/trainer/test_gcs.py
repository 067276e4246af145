"""`kubeloop snapshot`, `train` and `serve` on ``gs://`` against a GCS emulator
(fake-gcs-server, tests/gcs_server.py): the data paths of gcsfs — an object, a prefix and a
glob read as the local file's version, snapshots and a model written to a gs:// store
(tests/component/serving/test_s3_model.py serves one from it). The emulator checks no
credentials: GCS authentication is untested."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from gcs_server import GcsServer
from kubeloop.contracts.artifacts import ArtifactLayout

from .conftest import Result, put_cancer, run_kubeloop
from .train_helpers import flags

_runs = itertools.count()


@pytest.fixture(scope="module")
def bucket(gcs: GcsServer, data: Path) -> str:
    """cancer.csv whole, and in PARTS files under parts/."""
    uri = gcs.make_bucket("kubeloop-gcs-data")
    put_cancer(gcs.fs(), "kubeloop-gcs-data", data / "cancer.csv")
    return uri


def run(tmp_path: Path, gcs: GcsServer, *args: str) -> Result:
    return run_kubeloop(list(args), tmp_path / f"termination-{next(_runs)}", env=gcs.env())


@pytest.fixture(scope="module")
def local_digest(data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("local")
    args = ["snapshot", "--source", str(data / "cancer.csv"), "--out", str(tmp / "s")]
    result = run_kubeloop(args, tmp / "termination")
    assert result.code == 0, result.stderr
    return str(result.summary["digest"])


@pytest.mark.parametrize("key", ["cancer.csv", "parts/", "parts/part-*.csv"])
def test_gs_source_has_the_local_version(gcs, bucket, local_digest, tmp_path, key):
    out = str(tmp_path / "snaps")
    result = run(tmp_path, gcs, "snapshot", "--source", f"{bucket}/{key}", "--format", "csv",
                 "--out", out)  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.summary["digest"] == local_digest


def test_snapshot_and_training_on_a_gs_store(gcs, bucket, local_digest, tmp_path):
    store = gcs.make_bucket("kubeloop-gcs-store")
    snap = run(tmp_path, gcs, "snapshot", "--source", f"{bucket}/parts/", "--format", "csv",
               "--out", f"{store}/datasets/cancer")  # fmt: skip
    assert snap.code == 0, snap.stderr
    assert snap.summary["snapshot_uri"].startswith(f"{store}/datasets/cancer/")
    model = f"{store}/models/cancer-1"
    args = flags(Path("."), Path("."), params='{"max_iter": 2000}')
    args[args.index("--data") + 1] = snap.summary["snapshot_uri"]
    args[args.index("--out") + 1] = model
    trained = run(tmp_path, gcs, *args)
    assert trained.code == 0, trained.stderr
    names = {p.rsplit("/", 1)[1] for p in gcs.fs().ls(model.removeprefix("gs://"))}
    assert {ArtifactLayout.MODEL, ArtifactLayout.METADATA, ArtifactLayout.PROFILE} <= names


def test_a_missing_bucket_fails_naming_the_source(gcs, tmp_path):
    source = "gs://no-such-gcs-bucket/cancer.csv"
    result = run(tmp_path, gcs, "snapshot", "--source", source, "--out", str(tmp_path / "s"))
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {result.summary['reason']}"]
    assert result.summary["reason"].startswith(f"{source}: ")
    assert "not found" in result.summary["reason"]
