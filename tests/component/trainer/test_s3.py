"""`kubeloop snapshot` and `kubeloop train` on ``s3://`` against a real S3 server
(Versity Gateway, tests/s3_server.py): the same data version as the local file, a prefix
or glob of files read as one table, artifacts written to an S3 store, a source with its
own credentials, and one-line reasons for bad credentials and missing buckets that name
the source and never show the secret."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata, join
from kubeloop.contracts.storage import SOURCE_PREFIX
from s3_server import SECRET_KEY, S3Server

from .conftest import Result, put_cancer, run_kubeloop
from .train_helpers import flags

_runs = itertools.count()


@pytest.fixture(scope="module")
def bucket(s3: S3Server, data: Path) -> str:
    """A bucket holding cancer.csv whole, and split in PARTS files under parts/ (plus a
    file of another format there, which a csv prefix skips)."""
    uri = s3.make_bucket("kubeloop-data")
    fs = s3.fs()
    put_cancer(fs, "kubeloop-data", data / "cancer.csv")
    fs.pipe("kubeloop-data/parts/README.txt", b"not data\n")
    return uri


def run(tmp_path: Path, *args: str, env: dict[str, str]) -> Result:
    """`kubeloop ARGS` with ``env`` added (nothing else of the caller's AWS settings)."""
    return run_kubeloop(list(args), tmp_path / f"termination-{next(_runs)}", env=env)


def snapshot(tmp_path: Path, source: str, out: str, env: dict[str, str]) -> Result:
    return run(tmp_path, "snapshot", "--source", source, "--format", "csv", "--out", out, env=env)


@pytest.fixture(scope="module")
def local_digest(data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("local")
    result = snapshot(tmp, str(data / "cancer.csv"), str(tmp / "snaps"), env={})
    assert result.code == 0, result.stderr
    return str(result.summary["digest"])


@pytest.mark.parametrize(
    "key",
    ["cancer.csv", "parts/", "parts", "parts/part-*.csv"],
    ids=["file", "prefix", "folder", "glob"],
)
def test_s3_source_has_the_local_version(s3, bucket, local_digest, tmp_path, key):
    result = snapshot(tmp_path, f"{bucket}/{key}", str(tmp_path / "snaps"), s3.env())
    assert result.code == 0, result.stderr
    assert result.summary["digest"] == local_digest
    assert result.summary["rows"] == 569


def test_snapshot_and_training_on_an_s3_store(s3, bucket, local_digest, tmp_path):
    store = s3.make_bucket("kubeloop-store")
    snap = snapshot(tmp_path, f"{bucket}/parts/", f"{store}/datasets/cancer", s3.env())
    assert snap.code == 0, snap.stderr
    folder = ArtifactLayout.snapshot_dir(join(store, "datasets", "cancer"), local_digest)
    assert snap.summary["snapshot_uri"] == join(folder, ArtifactLayout.data_file("csv"))
    fs = s3.fs()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(folder.removeprefix("s3://"))) == [
        ArtifactLayout.data_file("csv"),
        ArtifactLayout.PROFILE,
    ]
    again = snapshot(tmp_path, f"{bucket}/cancer.csv", f"{store}/datasets/cancer", s3.env())
    assert again.code == 0, again.stderr  # the same version, already stored: kept as it is
    assert again.summary["snapshot_uri"] == snap.summary["snapshot_uri"]

    model = f"{store}/models/cancer-1"
    args = flags(Path("."), Path("."), params='{"max_iter": 2000}')
    args[args.index("--data") + 1] = snap.summary["snapshot_uri"]
    args[args.index("--out") + 1] = model
    trained = run(tmp_path, *args, env=s3.env())
    assert trained.code == 0, trained.stderr
    assert trained.summary["artifact_uri"].startswith(model)
    names = {p.rsplit("/", 1)[1] for p in fs.ls(model.removeprefix("s3://"))}
    assert {ArtifactLayout.MODEL, ArtifactLayout.METADATA, ArtifactLayout.PROFILE} <= names
    meta = ModelMetadata.model_validate_json(fs.cat(f"{model.removeprefix('s3://')}/model.json"))
    assert meta.inputs


def test_a_source_with_its_own_credentials(s3, bucket, local_digest, tmp_path):
    """KUBELOOP_SOURCE_* (a Dataset's secretRef) reach the source; the standard variables
    (the artifact store's) are wrong here and the store is local, so only they could work."""
    env = s3.env(secret="not-the-secret")
    env.update({SOURCE_PREFIX + k: v for k, v in s3.env().items()})
    result = snapshot(tmp_path, f"{bucket}/cancer.csv", str(tmp_path / "snaps"), env)
    assert result.code == 0, result.stderr
    assert result.summary["digest"] == local_digest


def one_line_reason(result: Result, source: str) -> str:
    """The failure's reason: exit 2, one stderr line naming ``source``, the same reason in
    the termination message, and the secret nowhere."""
    assert result.code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {source}: ")
    assert result.summary["reason"] == lines[0].removeprefix("error: ")
    for text in (result.stdout, result.stderr, result.termination):
        assert SECRET_KEY not in text
        assert "Wrong-Secret-Value" not in text
    return lines[0]


def test_wrong_credentials_fail_naming_the_source(s3, bucket, tmp_path):
    source = f"{bucket}/cancer.csv"
    env = s3.env(secret="Wrong-Secret-Value")
    reason = one_line_reason(snapshot(tmp_path, source, str(tmp_path / "s"), env), source)
    assert "access denied" in reason, reason


def test_unknown_bucket_fails_naming_the_source(s3, tmp_path):
    source = "s3://no-such-bucket-here/cancer.csv"
    reason = one_line_reason(snapshot(tmp_path, source, str(tmp_path / "s"), s3.env()), source)
    assert "not found" in reason, reason


def test_an_empty_prefix_fails_naming_the_source(s3, bucket, tmp_path):
    source = f"{bucket}/nothing-here/*.csv"
    reason = one_line_reason(snapshot(tmp_path, source, str(tmp_path / "s"), s3.env()), source)
    assert "no csv files match" in reason, reason


def test_a_prefix_without_a_format_fails_naming_the_source(s3, bucket, tmp_path):
    source = f"{bucket}/parts/"
    result = run(tmp_path, "snapshot", "--source", source, "--out", str(tmp_path / "s"),
                 env=s3.env())  # fmt: skip
    reason = one_line_reason(result, source)
    assert "--format" in reason, reason
