"""`kubeloop gc-artifacts`: the cleanup a registry retention runs, on a local folder and on a
real S3 server. Only folders strictly under --under go; anything else refuses the whole run
before a byte is deleted; a folder already gone is fine (a rerun of the Job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3_server import S3Server

from .conftest import run_kubeloop


def model_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "model.json").write_text("{}")
    return folder


def gc(tmp_path: Path, under: str, *folders: str, env: dict[str, str] | None = None):
    return run_kubeloop(
        ["gc-artifacts", "--under", under, *folders], tmp_path / "termination", env=env
    )


def test_the_folders_go_and_their_neighbours_stay(tmp_path):
    models = tmp_path / "store" / "models" / "ml"
    old, kept = model_folder(models, "run-1"), model_folder(models, "run-2")
    result = gc(tmp_path, f"{models}/", str(old))
    assert result.code == 0, result.stderr
    assert result.summary == {"deleted": [str(old)], "already_gone": []}
    assert not old.exists()
    assert (kept / "model.onnx").exists()
    again = gc(tmp_path, f"{models}/", str(old))  # the Job's retry
    assert again.code == 0, again.stderr
    assert again.summary == {"deleted": [], "already_gone": [str(old)]}


@pytest.mark.parametrize(
    "folder",
    ["{models}", "{models}/", "{models}/../other", "{models}/./run-1", "{root}/elsewhere"],
    ids=["the-prefix-itself", "the-prefix-slash", "dot-dot", "dot", "outside"],
)
def test_a_folder_not_strictly_under_the_prefix_refuses_the_run(tmp_path, folder):
    models = tmp_path / "store" / "models" / "ml"
    victim = model_folder(models, "run-1")
    bad = folder.format(models=models, root=tmp_path)
    result = gc(tmp_path, f"{models}/", str(victim), bad)
    assert result.code == 2
    assert "not under" in result.stderr
    assert (victim / "model.onnx").exists()  # nothing deleted, not even the good one


def test_on_s3(s3: S3Server, tmp_path):
    bucket = s3.make_bucket("kubeloop-gc")
    fs = s3.fs()
    for name in ("run-1", "run-2"):
        fs.pipe(f"kubeloop-gc/models/ml/{name}/model.onnx", b"onnx")
    result = gc(tmp_path, f"{bucket}/models/ml/", f"{bucket}/models/ml/run-1", env=s3.env())
    assert result.code == 0, result.stderr
    assert not fs.exists("kubeloop-gc/models/ml/run-1/model.onnx")
    assert fs.exists("kubeloop-gc/models/ml/run-2/model.onnx")
