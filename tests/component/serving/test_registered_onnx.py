"""A model exported elsewhere, registered with ``kubeloop register`` and served by a real
``kubeloop serve`` process like a trained one; and ``kubeloop inspect``, the Job that reads
a bare model's graph for the operator.

The models are built with ``onnx.helper`` the way a PyTorch export looks: one 2-D
``[N, F]`` float input, outputs with their author's names. Clients send the features one
by one (V2) or as rows and records (V1); the server stacks them into the tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from serving_helpers import KUBELOOP, Server, serving, wait_for

from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata, Profile
from kubeloop.contracts.results import JobResult
from onnx_models import linear_classifier, linear_regression, softmax, two_inputs
from s3_server import S3Server

FEATURES = ["sepal", "petal", "stem", "leaf"]
RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(size=(4, 3))
BIAS = RNG.normal(size=3)


def register(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBELOOP), "register", *args], capture_output=True, text=True, timeout=120
    )


def registered(*args: str) -> dict[str, Any]:
    """The ModelVersion manifest ``kubeloop register --print`` writes."""
    result = register(*args)
    assert result.returncode == 0, result.stderr
    manifest: dict[str, Any] = yaml.safe_load(result.stdout)
    return manifest


def folder_of(manifest: dict[str, Any]) -> Path:
    uri = manifest["spec"]["artifact"]["uri"]
    return Path(uri.removeprefix("file://")).parent


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    return linear_classifier(tmp_path / "export" / "clf.onnx", WEIGHTS, BIAS)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.csv"
    pd.DataFrame(RNG.normal(size=(300, 4)), columns=FEATURES).to_csv(path, index=False)
    return path


def test_a_pytorch_style_classifier_is_registered_and_served(
    classifier: Path, reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.93}))
    manifest = registered(
        "--onnx", str(classifier), "--name", "flowers", "--feature-names", ",".join(FEATURES),
        "--label-output", "class_id", "--proba-output", "probs", "--reference", str(reference),
        "--metrics", str(tmp_path / "metrics.json"), "--store", store.as_uri(), "-n", "ml",
    )  # fmt: skip
    sha = hashlib.sha256(classifier.read_bytes()).hexdigest()
    spec = manifest["spec"]
    assert manifest["metadata"] == {"name": "flowers-v1", "namespace": "ml"}
    assert spec["artifact"]["sha256"] == sha
    assert [i["name"] for i in spec["inputs"]] == FEATURES
    assert spec["metrics"] == {"accuracy": 0.93}
    folder = folder_of(manifest)
    assert folder == store / "models" / "ml" / "flowers" / sha
    assert spec["profileUri"] == (folder / ArtifactLayout.PROFILE).as_uri()
    meta = ModelMetadata.model_validate_json((folder / ArtifactLayout.METADATA).read_text())
    assert (meta.packed_input, meta.label_output, meta.proba_output) == (
        "input",
        "class_id",
        "probs",
    )
    assert meta.classes == [0, 1, 2]
    profile = Profile.model_validate_json((folder / ArtifactLayout.PROFILE).read_text())
    assert sorted(profile.features) == sorted(FEATURES)
    assert profile.rows == 300
    assert profile.prediction is not None

    rows = RNG.normal(size=(5, 4)).astype(np.float32)
    proba = softmax(rows @ WEIGHTS.astype(np.float32) + BIAS.astype(np.float32))
    with serving(folder, env={"KUBELOOP_SERVING_EXPECTED_SHA256": sha}) as server:
        ask_every_way(server, rows, proba)
    # batch prediction stacks the columns the same way
    table = tmp_path / "rows.csv"
    pd.DataFrame(rows, columns=FEATURES).to_csv(table, index=False)
    scored = tmp_path / "scored.csv"
    argv = [str(KUBELOOP), "predict", "--model", str(folder), "--data", str(table), "--out",
            str(scored)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(scored)["class_id"].tolist() == proba.argmax(axis=1).tolist()


def ask_every_way(server: Server, rows: np.ndarray[Any, Any], proba: np.ndarray[Any, Any]) -> None:
    """V2 feature by feature and as one tensor, V1 rows and records: the same answers."""
    client = server.client()
    described = client.get("/v2/models/flowers").json()
    assert [i["name"] for i in described["inputs"]] == FEATURES
    v2 = {
        "inputs": [
            {"name": n, "shape": [5, 1], "datatype": "FP32", "data": rows[:, i].tolist()}
            for i, n in enumerate(FEATURES)
        ]
    }
    answer = client.post("/v2/models/flowers/infer", json=v2)
    assert answer.status_code == 200, answer.text
    out = {o["name"]: o for o in answer.json()["outputs"]}
    assert out["class_id"]["data"] == proba.argmax(axis=1).tolist()
    np.testing.assert_allclose(np.reshape(out["probs"]["data"], (5, 3)), proba, rtol=1e-5)
    # one 2-D tensor of every feature (the server's matrix path) gives the same answer
    matrix = [{"name": "input", "shape": [5, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]
    whole = client.post("/v2/models/flowers/infer", json={"inputs": matrix})
    assert whole.status_code == 200, whole.text
    assert {o["name"]: o for o in whole.json()["outputs"]}["class_id"] == out["class_id"]
    v1 = client.post("/v1/models/flowers:predict", json={"instances": rows.tolist()}).json()
    assert v1["predictions"] == proba.argmax(axis=1).tolist()
    np.testing.assert_allclose(v1["probabilities"], proba, rtol=1e-5)
    records = [dict(zip(FEATURES, r, strict=True)) for r in rows.tolist()]
    by_name = client.post("/v1/models/flowers:predict", json={"instances": records}).json()
    assert by_name["predictions"] == v1["predictions"]
    short = client.post("/v1/models/flowers:predict", json={"instances": [[1.0, 2.0]]})
    assert short.status_code == 400
    # the inline drift monitor watches each named feature against the reference
    assert server.metric("kubeloop_feature_drift", feature="petal") is not None
    # predictions are counted per class from the named label output (canary analysis)
    answered = len(rows) * 4
    wait_for(
        "every answered row counted by class",
        lambda: server.metric("kubeloop_predictions_total") == answered,
    )


def test_a_regression_with_one_output_needs_no_output_flags(tmp_path: Path) -> None:
    model = linear_regression(tmp_path / "reg.onnx", np.array([1.0, -2.0, 0.5]), 3.0)
    store = tmp_path / "store"
    manifest = registered(
        "--onnx", str(model), "--name", "price", "--task", "regression",
        "--feature-names", "rooms,age,area", "--store", store.as_uri(), "--version", "4",
    )  # fmt: skip
    assert manifest["metadata"]["name"] == "price-v4"
    assert "profileUri" not in manifest["spec"]
    with serving(folder_of(manifest)) as server:
        rows = [[2.0, 1.0, 10.0], [0.0, 0.0, 0.0]]
        answer = server.client().post("/v1/models/price:predict", json={"instances": rows})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.reshape(answer.json()["predictions"], -1), [8.0, 3.0])
    # registering the same model again is idempotent: same folder, same manifest
    again = registered(
        "--onnx", str(model), "--name", "price", "--task", "regression",
        "--feature-names", "rooms,age,area", "--store", store.as_uri(), "--version", "4",
    )  # fmt: skip
    assert again == manifest


def _bad_cases(tmp: Path, classifier: Path) -> list[tuple[list[str], str]]:
    (tmp / "notes.onnx").write_text("sepal,petal\n1,2\n")
    two = two_inputs(tmp / "two.onnx")
    words = pd.DataFrame(RNG.normal(size=(3, 4)), columns=FEATURES)
    words["petal"] = ["wide", "narrow", "wide"]
    words.to_csv(tmp / "words.csv", index=False)
    names = ["--feature-names", ",".join(FEATURES)]
    return [
        (["--onnx", str(tmp / "notes.onnx")], "not an ONNX model"),
        (["--onnx", str(two)], "has inputs 'a' [N, 2], 'b' [N, 3]"),
        (["--onnx", str(classifier)], "name its 4 features with --feature-names"),
        (["--onnx", str(classifier), "--feature-names", "a,b,c"], "names 3 features; input"),
        ([
            "--onnx", str(classifier), *names, "--label-output", "klass",
        ], "--label-output 'klass': model.onnx has no such output (its outputs: probs, class_id)"),
        ([
            "--onnx", str(classifier), *names, "--label-output", "class_id",
            "--proba-output", "prob",
        ], "--proba-output 'prob': model.onnx has no such output"),
        (["--onnx", str(classifier), *names], "none named 'label': name the prediction with"),
        ([
            "--onnx", str(classifier), "--feature-names", "a,b,c,d", "--label-output", "class_id",
            "--reference", str(tmp / "reference.csv"),
        ], "--reference " + str(tmp / "reference.csv") + ": no column 'a'"),
        ([
            "--onnx", str(classifier), "--feature-names", ",".join(FEATURES),
            "--label-output", "class_id", "--reference", str(tmp / "words.csv"),
        ], "--reference: column 'petal' is not FP32"),
    ]  # fmt: skip


def test_bad_input_is_one_line_naming_it_and_writes_nothing(
    classifier: Path, reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for args, expected in _bad_cases(tmp_path, classifier):
        result = register(*args, "--name", "flowers", "--store", store.as_uri())
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), result.stderr
        assert expected in lines[0], lines[0]
        assert result.stdout == ""
        assert not store.exists(), f"{args} wrote to the store"
    good = ["--onnx", str(classifier), "--feature-names", ",".join(FEATURES),
            "--label-output", "class_id", "--store", store.as_uri()]  # fmt: skip
    named = register(*good, "--name", "Bad_Name")
    assert named.returncode == 2
    assert named.stderr.startswith("error: --name Bad_Name: String should match pattern")
    kubeconfig = str(tmp_path / "no-such-kubeconfig")
    nowhere = register(*good, "--name", "flowers", "--apply", "--kubeconfig", kubeconfig)
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("error: no cluster to apply to:"), nowhere.stderr
    assert not store.exists()


def test_inspect_reports_the_graph_as_a_job_result(classifier: Path, tmp_path: Path) -> None:
    sha = hashlib.sha256(classifier.read_bytes()).hexdigest()
    term = tmp_path / "termination-log"
    env = {**os.environ, "KUBELOOP_TERMINATION_LOG": str(term)}

    def inspect(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(KUBELOOP), "inspect", "--model", str(classifier), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

    done = inspect("--sha256", sha)
    assert done.returncode == 0, done.stderr
    result = JobResult.from_message(term.read_text())
    assert result is not None
    assert (result.kind, result.status, result.sha256) == ("inspect", "succeeded", sha)
    assert [(t.name, t.shape) for t in result.inputs or []] == [("input", [-1, 4])]
    assert [(t.name, t.datatype) for t in result.outputs or []] == [
        ("probs", "FP32"),
        ("class_id", "INT64"),
    ]
    wrong = inspect("--sha256", "0" * 64)
    assert wrong.returncode == 2
    failed = JobResult.from_message(term.read_text())
    assert failed is not None
    assert failed.status == "failed"
    assert f"has sha256 {sha}, not {'0' * 64}" in (failed.reason or "")


def test_registered_into_an_s3_store_and_served_from_it(
    classifier: Path, reference: Path, s3: S3Server
) -> None:
    root = s3.make_bucket("kubeloop-registry")
    env = {**os.environ, **s3.env()}
    argv = [
        str(KUBELOOP), "register", "--onnx", str(classifier), "--name", "flowers",
        "--feature-names", ",".join(FEATURES), "--label-output", "class_id",
        "--proba-output", "probs", "--reference", str(reference), "--store", root,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(done.stdout)["spec"]
    sha = spec["artifact"]["sha256"]
    folder = spec["artifact"]["uri"].removesuffix(f"/{ArtifactLayout.MODEL}")
    assert folder == f"{root}/models/default/flowers/{sha}"
    names = sorted(p.rsplit("/", 1)[1] for p in s3.fs().ls(folder.split("://", 1)[1]))
    assert names == sorted([ArtifactLayout.MODEL, ArtifactLayout.METADATA, ArtifactLayout.PROFILE])
    rows = RNG.normal(size=(3, 4)).astype(np.float32)
    proba = softmax(rows @ WEIGHTS.astype(np.float32) + BIAS.astype(np.float32))
    with serving(folder, env={**s3.env(), "KUBELOOP_SERVING_EXPECTED_SHA256": sha}) as server:
        v1 = server.client().post("/v1/models/flowers:predict", json={"instances": rows.tolist()})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == proba.argmax(axis=1).tolist()
