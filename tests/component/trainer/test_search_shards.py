"""A search across pods as real processes: each shard is `kubeloop train --search-shards N`
with its index in ``JOB_COMPLETION_INDEX`` (as an Indexed Job's pod gets it), writing its
trials to a store (a local folder, and a real S3 server); `kubeloop train --trials` then
refits the winner. Same seed, same winner, same trials and the same model.onnx as the
in-process search; a lost shard's rerun records nothing twice; bad flags exit 2."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.contracts import search as contract
from kubeloop.contracts.artifacts import ArtifactLayout

from .conftest import Result, run_kubeloop
from .train_helpers import metadata_of

SPEC: dict[str, Any] = {
    "datasetRef": {"name": "cancer"},
    "modelName": "cancer",
    "task": "classification",
    "target": "target",
    "estimator": {"className": "RandomForestClassifier", "params": {"n_estimators": 15}},
    "split": {"testFraction": 0.25, "seed": 7},
    "search": {
        "strategy": "random",
        "space": {"max_depth": [2, 3, 4, 6, 8, None], "min_samples_leaf": [1, 2, 4, 8]},
        "trials": 9,
        "cv": 3,
        "parallelism": 3,
    },
}
PODS = 3


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def train(tmp_path: Path, key: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return run_kubeloop(["train", *args], tmp_path / f"termination-{key}", env=env)


def shard(
    tmp_path: Path, spec: Path, data: Path, store: str, index: int, env: dict[str, str]
) -> Result:
    """One pod of the Indexed Job: the index from the environment, as Kubernetes gives it."""
    args = ["--spec", str(spec), "--data", str(data), "--out", store, "--search-shards", str(PODS)]
    shard_env = {**env, contract.SHARD_ENV: str(index)}
    return train(tmp_path, f"shard-{index}-{os.urandom(3).hex()}", *args, env=shard_env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str], Any]:
    """Where the trials go: (search folder URI, the environment reaching it, its fsspec fs)."""
    if request.param == "file":
        import fsspec

        return str(tmp_path / "search"), {}, fsspec.filesystem("file")
    s3 = request.getfixturevalue("s3")
    bucket = s3.make_bucket(f"search-{os.urandom(4).hex()}")
    return f"{bucket}/searches/cancer", s3.env(), s3.fs()


def test_shards_in_processes_give_the_serial_winner(tmp_path, data, spec_file, store):
    folder, env, fs = store
    csv = data / "cancer.csv"
    with ThreadPoolExecutor(max_workers=PODS + 1) as pool:
        serial_run = pool.submit(
            train, tmp_path, "serial", "--spec", str(spec_file), "--data", str(csv),
            "--out", str(tmp_path / "serial"),
        )  # fmt: skip
        shards = list(
            pool.map(lambda i: shard(tmp_path, spec_file, csv, folder, i, env), range(PODS))
        )
        serial = serial_run.result()
    assert serial.code == 0, serial.stderr
    for index, result in enumerate(shards):
        assert result.code == 0, result.stderr
        assert json.loads(result.termination) == {
            "kind": "search",
            "status": "succeeded",
            "trials": len(contract.shard_indexes(index, PODS, 9)),
        }
    written = sorted(fs.ls(contract.trials_dir(folder).removeprefix("s3://"), detail=False))
    assert [Path(p).name for p in written] == [f"{i:05d}.json" for i in range(9)]

    out = tmp_path / "parallel"
    refit = train(
        tmp_path, "refit", "--spec", str(spec_file), "--data", str(csv), "--out", str(out),
        "--trials", folder, env=env,
    )  # fmt: skip
    assert refit.code == 0, refit.stderr
    mine, theirs = metadata_of(out), metadata_of(tmp_path / "serial")
    assert mine.search == theirs.search
    assert mine.lineage.params == theirs.lineage.params
    assert mine.metrics == theirs.metrics
    assert refit.summary["sha256"] == serial.summary["sha256"]
    assert sha256(out / ArtifactLayout.MODEL) == sha256(tmp_path / "serial" / ArtifactLayout.MODEL)


def test_a_lost_shard_reruns_and_records_nothing_twice(tmp_path, data, spec_file):
    folder, csv = tmp_path / "search", data / "cancer.csv"
    for index in (0, 1, 2, 1):  # shard 1's first pod is lost after writing: its index reruns
        result = shard(tmp_path, spec_file, csv, str(folder), index, {})
        assert result.code == 0, result.stderr
    trials = sorted((folder / contract.TRIALS_DIR).iterdir())
    assert [p.name for p in trials] == [f"{i:05d}.json" for i in range(9)]
    indexes = [json.loads(p.read_text())["index"] for p in trials]
    assert indexes == list(range(9))


def test_bad_search_flags_exit_2_naming_them(tmp_path, data, spec_file):
    csv = str(data / "cancer.csv")
    base = ["--spec", str(spec_file), "--data", csv, "--out", str(tmp_path / "o")]
    out_of_range = train(
        tmp_path, "range", *base, "--search-shards", "3", env={contract.SHARD_ENV: "3"}
    )
    assert out_of_range.code == 2
    assert "JOB_COMPLETION_INDEX) must be from 0 to 2, got 3" in out_of_range.stderr
    missing = train(tmp_path, "missing", *base, "--trials", str(tmp_path / "nothing"))
    assert missing.code == 2
    assert "no trials" in missing.stderr
    plain = yaml.safe_load(spec_file.read_text())
    del plain["search"]
    no_search = tmp_path / "plain.yaml"
    no_search.write_text(yaml.safe_dump(plain))
    refused = train(
        tmp_path, "plain", "--spec", str(no_search), "--data", csv, "--out", str(tmp_path / "p"),
        "--search-shards", "2", "--search-shard", "0",
    )  # fmt: skip
    assert refused.code == 2
    assert "--search-shards and --trials need spec.search" in refused.stderr
