"""`kubeloop snapshot` and `train` on ``az://`` against an Azure Blob emulator (Azurite,
tests/azure_server.py) that checks Shared Key signatures: an object, a prefix and a glob
read as the local file's version, snapshots and a model written to an az:// store, the
credentials from AZURE_STORAGE_CONNECTION_STRING (or a source's own, behind
KUBELOOP_SOURCE_), and a wrong account key refused in one line without the key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from azure_server import KEY, OTHER_KEY, AzuriteServer
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.storage import SOURCE_PREFIX

from .conftest import Result, put_cancer, run_kubeloop
from .train_helpers import flags

_runs = itertools.count()


@pytest.fixture(scope="module")
def container(azure: AzuriteServer, data: Path) -> str:
    """cancer.csv whole, and in PARTS files under parts/."""
    uri = azure.make_container("kubeloop-az-data")
    put_cancer(azure.fs(), "kubeloop-az-data", data / "cancer.csv")
    return uri


def run(tmp_path: Path, env: dict[str, str], *args: str) -> Result:
    return run_kubeloop(list(args), tmp_path / f"termination-{next(_runs)}", env=env)


def snapshot(tmp_path: Path, env: dict[str, str], source: str, out: str) -> Result:
    return run(tmp_path, env, "snapshot", "--source", source, "--format", "csv", "--out", out)


@pytest.fixture(scope="module")
def local_digest(data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("local")
    result = snapshot(tmp, {}, str(data / "cancer.csv"), str(tmp / "s"))
    assert result.code == 0, result.stderr
    return str(result.summary["digest"])


@pytest.mark.parametrize("key", ["cancer.csv", "parts/", "parts/part-*.csv"])
def test_az_source_has_the_local_version(azure, container, local_digest, tmp_path, key):
    result = snapshot(tmp_path, azure.env(), f"{container}/{key}", str(tmp_path / "s"))
    assert result.code == 0, result.stderr
    assert result.summary["digest"] == local_digest


def test_snapshot_and_training_on_an_az_store(azure, container, local_digest, tmp_path):
    store = azure.make_container("kubeloop-az-store")
    snap = snapshot(tmp_path, azure.env(), f"{container}/parts/", f"{store}/datasets/cancer")
    assert snap.code == 0, snap.stderr
    assert snap.summary["snapshot_uri"].startswith(f"{store}/datasets/cancer/")
    model = f"{store}/models/cancer-1"
    args = flags(Path("."), Path("."), params='{"max_iter": 2000}')
    args[args.index("--data") + 1] = snap.summary["snapshot_uri"]
    args[args.index("--out") + 1] = model
    trained = run(tmp_path, azure.env(), *args)
    assert trained.code == 0, trained.stderr
    names = {p.rsplit("/", 1)[1] for p in azure.fs().ls(model.removeprefix("az://"))}
    assert {ArtifactLayout.MODEL, ArtifactLayout.METADATA, ArtifactLayout.PROFILE} <= names


def test_a_source_with_its_own_connection_string(azure, container, local_digest, tmp_path):
    env = azure.env(key=OTHER_KEY)  # the store's (wrong here; the store is local)
    env.update({SOURCE_PREFIX + k: v for k, v in azure.env().items()})
    result = snapshot(tmp_path, env, f"{container}/cancer.csv", str(tmp_path / "s"))
    assert result.code == 0, result.stderr
    assert result.summary["digest"] == local_digest


def test_a_wrong_account_key_fails_naming_the_source_without_the_key(azure, container, tmp_path):
    source = f"{container}/cancer.csv"
    result = snapshot(tmp_path, azure.env(key=OTHER_KEY), source, str(tmp_path / "s"))
    assert result.code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {source}: access denied: "), lines[0]
    for text in (result.stdout, result.stderr, result.termination):
        assert KEY not in text
        assert OTHER_KEY not in text
