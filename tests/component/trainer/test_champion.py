"""`kubeloop train --champion` as a real process: the champion/challenger gate.

The champion is a model directory an earlier real run wrote; the challenger is
trained on new data and both are scored with ONNX Runtime on the challenger's
held-out rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split
from train_helpers import flags, metadata_of, predict

from kubeloop.contracts.artifacts import VALUE_OUTPUT, ArtifactLayout

WEAK = "mean smoothness"  # one feature: a clearly worse classifier


@pytest.fixture(scope="module")
def champions(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories: a good and a weak cancer classifier, a full and a one-feature
    diabetes regressor."""
    root = tmp_path_factory.mktemp("champions")
    regression = {
        "file": "diabetes.csv",
        "task": "regression",
        "estimator": "Ridge",
        "params": "{}",
    }
    runs = {
        "good": flags(data, root / "good"),
        "weak": flags(data, root / "weak", "--features", WEAK),
        "reg-full": flags(data, root / "reg-full", **regression),
        "reg-age": flags(data, root / "reg-age", "--features", "age", **regression),
    }
    kubeloop = str(Path(sys.executable).with_name("kubeloop"))
    env = {**os.environ, "KUBELOOP_TERMINATION_LOG": str(root / "termination-log")}
    for args in runs.values():
        proc = subprocess.run(
            [kubeloop, *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr
    return {key: root / key for key in runs}


def spec_file(tmp_path: Path, task: str, estimator: str, compare: dict, **extra) -> Path:
    spec = {
        "datasetRef": {"name": "local"},
        "task": task,
        "target": "target",
        "estimator": {"className": estimator, "params": extra.pop("params", {})},
        "gate": {"compareTo": compare},
        "modelName": "m",
        **extra,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_worse_challenger_fails_with_both_numbers(kubeloop, data, tmp_path, champions):
    out = tmp_path / "challenger"
    result = kubeloop(*flags(data, out, "--features", WEAK, "--champion", str(champions["good"])))
    assert result.code == 3, result.stderr
    summary = result.summary
    assert summary["status"] == "rejected"
    comparison = summary["comparison"]
    assert comparison["reason"] == "Worse"
    assert comparison["passed"] is False
    assert comparison["metric"] == "accuracy"
    assert comparison["tolerance"] == 0.01
    champion, challenger = comparison["champion"]["value"], comparison["challenger"]["value"]
    assert challenger == summary["metrics"]["accuracy"]
    assert challenger < champion - 0.01
    # The champion's number is its accuracy on the challenger's held-out rows.
    frame = pd.read_csv(data / "cancer.csv")
    _, x_test, _, y_test = train_test_split(
        frame.drop(columns="target"),
        frame["target"],
        test_size=0.2,
        random_state=42,
        stratify=frame["target"],
    )
    labels = predict(champions["good"], x_test)["label"]
    assert champion == pytest.approx(skm.accuracy_score(y_test, labels))
    assert "accuracy" in summary["reason"]
    assert "champion" in summary["reason"]
    assert json.loads(result.termination)["comparison"] == comparison
    # the model directory (kept to show why) records the comparison too
    recorded = metadata_of(out).comparison
    assert recorded is not None
    assert recorded.model_dump(exclude_none=True) == comparison


def test_equal_or_better_challenger_passes(kubeloop_all, data, tmp_path, champions):
    results = kubeloop_all(
        {
            "equal": flags(data, tmp_path / "equal", "--champion", str(champions["good"])),
            "better": flags(
                data,
                tmp_path / "better",
                "--champion",
                str(champions["weak"] / ArtifactLayout.MODEL),
                "--champion-version",
                "4",
            ),
        }
    )
    for key, result in results.items():
        assert result.code == 0, (key, result.stderr)
        comparison = result.summary["comparison"]
        assert comparison["passed"] is True, key
        assert comparison["reason"] == "NotWorse", key
        assert comparison["challenger"]["value"] == result.summary["metrics"]["accuracy"], key
    equal = results["equal"].summary["comparison"]
    assert equal["champion"]["value"] == pytest.approx(equal["challenger"]["value"])
    better = results["better"].summary["comparison"]
    assert better["champion"]["version"] == 4
    assert better["challenger"]["value"] > better["champion"]["value"] + 0.1
    assert "champion v4" in better["message"]
    card = (tmp_path / "better" / ArtifactLayout.CARD).read_text()
    assert f"Champion comparison: {better['message']}." in card


def test_missing_champion_columns_fail_before_training(kubeloop, data, tmp_path, champions):
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(data / "cancer.csv").rename(columns={"mean radius": "radius"}).to_csv(
        renamed, index=False
    )
    out = tmp_path / "never"
    args = flags(tmp_path, out, "--champion", str(champions["good"]), file="renamed.csv")
    result = kubeloop(*args)
    assert result.code == 3, result.stderr
    assert result.summary["status"] == "rejected"
    assert result.summary["reason"].startswith("SchemaChanged: ")
    assert "'mean radius'" in result.summary["reason"]
    comparison = result.summary["comparison"]
    assert comparison["reason"] == "SchemaChanged"
    assert comparison["passed"] is False
    assert not out.exists()


def test_a_column_that_is_no_longer_numbers_is_a_schema_change(kubeloop, data, tmp_path, champions):
    frame = pd.read_csv(data / "cancer.csv")
    frame["mean radius"] = ["r" + str(v) for v in frame["mean radius"]]
    frame.to_csv(tmp_path / "text.csv", index=False)
    args = flags(
        tmp_path, tmp_path / "never", "--champion", str(champions["good"]), file="text.csv"
    )
    result = kubeloop(*args)
    assert result.code == 3, result.stderr
    assert result.summary["comparison"]["reason"] == "SchemaChanged"
    assert "mean radius" in result.summary["reason"]


def test_policy_none_ignores_the_champion(kubeloop, data, tmp_path, champions):
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(data / "cancer.csv").rename(columns={"mean radius": "radius"}).to_csv(
        renamed, index=False
    )
    spec = spec_file(
        tmp_path,
        "classification",
        "LogisticRegression",
        {"policy": "None"},
        params={"max_iter": 500},
    )
    result = kubeloop(
        "train",
        *("--spec", str(spec), "--data", str(renamed), "--out", str(tmp_path / "out")),
        *("--champion", str(champions["good"])),
    )
    assert result.code == 0, result.stderr
    assert "comparison" not in result.summary


def test_rmse_lower_is_better(kubeloop_all, data, tmp_path, champions):
    """The same regressor passes against a one-feature champion (its rmse is lower) and fails
    against a full one when it sees one feature (its rmse is higher)."""
    spec = spec_file(tmp_path, "regression", "Ridge", {"policy": "Serving", "metric": "rmse"})
    base = ["train", "--spec", str(spec), "--data", str(data / "diabetes.csv")]
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(spec.read_text().replace("target: target", "target: target\nfeatures: [age]"))
    results = kubeloop_all(
        {
            "lower": [
                *base,
                "--out",
                str(tmp_path / "lower"),
                "--champion",
                str(champions["reg-age"]),
            ],
            "higher": [
                "train",
                *("--spec", str(narrow), "--data", str(data / "diabetes.csv")),
                *("--out", str(tmp_path / "higher"), "--champion", str(champions["reg-full"])),
            ],
        }
    )
    lower, higher = results["lower"], results["higher"]
    assert lower.code == 0, lower.stderr
    assert higher.code == 3, higher.stderr
    for result in (lower, higher):
        comparison = result.summary["comparison"]
        assert comparison["metric"] == "rmse"
        assert comparison["challenger"]["value"] == result.summary["metrics"]["rmse"]
    ok, bad = lower.summary["comparison"], higher.summary["comparison"]
    assert ok["challenger"]["value"] < ok["champion"]["value"]
    assert ok["reason"] == "NotWorse"
    assert bad["challenger"]["value"] > bad["champion"]["value"] + 0.01
    assert bad["reason"] == "Worse"
    assert bad["message"].startswith("rmse ")
    assert " > champion " in bad["message"]
    # the champion's rmse is its own, recomputed here on the challenger's held-out rows
    frame = pd.read_csv(data / "diabetes.csv")
    _, x_test, _, y_test = train_test_split(
        frame.drop(columns="target"), frame["target"], test_size=0.2, random_state=42
    )
    got = predict(champions["reg-full"], x_test)[VALUE_OUTPUT].reshape(-1)
    assert bad["champion"]["value"] == pytest.approx(skm.root_mean_squared_error(y_test, got))


def test_no_champion_given_passes_and_says_so(kubeloop, data, tmp_path):
    spec = spec_file(
        tmp_path,
        "classification",
        "LogisticRegression",
        {"policy": "Serving"},
        params={"max_iter": 500},
    )
    result = kubeloop(
        "train",
        *("--spec", str(spec), "--data", str(data / "cancer.csv"), "--out", str(tmp_path / "o")),
    )
    assert result.code == 0, result.stderr
    comparison = result.summary["comparison"]
    assert comparison["reason"] == "NoChampion"
    assert comparison["passed"] is True
    assert "champion" not in comparison
    assert "no champion" in comparison["message"]


def test_unusable_champions_fail_as_bad_input(kubeloop_all, data, tmp_path, champions):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / ArtifactLayout.MODEL).write_bytes(b"not onnx")
    good = champions["good"]
    digest = hashlib.sha256((good / ArtifactLayout.MODEL).read_bytes()).hexdigest()
    cases = {
        "missing": ["--champion", str(tmp_path / "nowhere")],
        "not-onnx": ["--champion", str(fake)],
        "tampered": ["--champion", str(good), "--champion-sha256", "0" * 64],
        "version-alone": ["--champion-version", "3"],
        "other-task": ["--champion", str(champions["reg-full"])],
    }
    results = kubeloop_all(
        {k: flags(data, tmp_path / f"out-{k}", *extra) for k, extra in cases.items()}
    )
    messages = {
        "missing": "cannot read it",
        "not-onnx": "is not a usable ONNX model",
        "tampered": "does not have the registered sha256",
        "version-alone": "need --champion",
        "other-task": "not a classification model",
    }
    for key, result in results.items():
        assert result.code == 2, (key, result.stderr)
        assert result.summary["status"] == "failed", key
        assert messages[key] in result.summary["reason"], (key, result.summary["reason"])
        assert not (tmp_path / f"out-{key}").exists(), key
    # the right digest is accepted
    ok = kubeloop_all(
        {"ok": flags(data, tmp_path / "ok", "--champion", str(good), "--champion-sha256", digest)}
    )["ok"]
    assert ok.code == 0, ok.stderr
