"""`kubeloop train` and `kubeloop snapshot` on the awkward cases: label types, missing text,
features that cannot work, specs from manifests, runs that fail late, shared snapshot folders.

Independent runs go out concurrently (a few real processes at a time) to keep the tier fast.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from kubeloop.contracts.artifacts import ModelMetadata, Profile

ROOT = Path(__file__).resolve().parents[3]
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], termination: Path) -> None:
        self.code = proc.returncode
        self.stderr = proc.stderr
        lines = proc.stdout.strip().splitlines()
        self.summary = json.loads(lines[-1]) if lines else None
        self.termination = termination.read_text() if termination.exists() else ""


def run_all(tmp_path: Path, commands: dict[str, list[str]]) -> dict[str, Run]:
    """Run every `kubeloop ARGS` as its own process, a few at a time; results by key."""

    def one(key: str) -> Run:
        term = tmp_path / f"termination-{key}"
        env = {**os.environ, "KUBELOOP_TERMINATION_LOG": str(term)}
        proc = subprocess.run(
            [KUBELOOP, *commands[key]],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        return Run(proc, term)

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return dict(zip(commands, pool.map(one, commands), strict=True))


def train_args(data: Path, out: Path, target: str = "y", *extra: str, **opts: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--target",
        target,
        "--task",
        opts.get("task", "classification"),
        "--estimator",
        opts.get("estimator", "DecisionTreeClassifier"),
        "--params",
        opts.get("params", '{"max_depth": 3}'),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edges")
    rng = np.random.default_rng(7)
    n = 240
    x = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[::9] = None  # missing text, in training and in the test split
    base = pd.DataFrame({"x": x, "colour": colour})
    base.assign(y=x > 0).to_csv(root / "bool.csv", index=False)
    gaps = base.assign(y=np.where(x > 0, 1.0, 0.0))
    gaps.loc[::25, "y"] = np.nan  # unlabelled rows: the target reads as float
    gaps.to_csv(root / "gaps.csv", index=False)
    base.assign(y=x * 0.5).to_csv(root / "continuous.csv", index=False)
    base.assign(y=np.where(x > 0, "up", "down")).to_csv(root / "text.csv", index=False)
    base.assign(y=1).to_csv(root / "oneclass.csv", index=False)
    base.assign(y=rng.choice(["a", "b", "c"], n)).to_csv(root / "three.csv", index=False)
    base.assign(empty=np.nan, y=x > 0).to_csv(root / "emptycol.csv", index=False)
    base.assign(x=np.where(x > 2, np.inf, x), y=x > 0).to_csv(root / "inf.csv", index=False)
    base.assign(label=x, y=x > 0).to_csv(root / "clash.csv", index=False)
    (root / "a-file").write_text("not a folder")
    return root


def test_label_types_and_missing_text_keep_parity(files, tmp_path):
    runs = run_all(
        tmp_path,
        {
            "bool": train_args(files / "bool.csv", tmp_path / "bool"),
            "gaps": train_args(files / "gaps.csv", tmp_path / "gaps"),
            "text": train_args(
                files / "text.csv",
                tmp_path / "text",
                estimator="LogisticRegression",
                params="{}",
            ),
        },
    )
    for key, run in runs.items():
        assert run.code == 0, (key, run.stderr)
        meta = ModelMetadata.model_validate_json((tmp_path / key / "model.json").read_text())
        assert meta.parity is not None
        assert meta.parity.passed, key
        label = next(o for o in meta.outputs if o.name == "label")
        if key == "text":
            assert meta.classes == ["down", "up"]
            assert label.datatype == "BYTES"
        else:  # booleans and whole-number floats become integer labels
            assert meta.classes == [0, 1]
            assert label.datatype == "INT64"
        profile = Profile.model_validate_json((tmp_path / key / "profile.json").read_text())
        colour = profile.features["colour"]
        assert colour.kind == "categorical"
        assert colour.missing > 0
        assert "missing" not in colour.frequencies  # the profile counts the data, not stand-ins

    # Readable by other users (the serving pod need not run as the trainer's uid).
    for path in [tmp_path / "bool", *(tmp_path / "bool").iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & stat.S_IROTH, (path, oct(mode))

    # The convention: a missing text value is fed as "missing", and differs from unseen text.
    out = tmp_path / "text"
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "x": np.array([[0.1], [0.1], [0.1]], dtype=np.float32),
        "colour": np.array([["missing"], ["never-seen"], ["red"]], dtype=object),
    }
    label, proba = sess.run(None, feeds)
    assert proba.shape == (3, 2)
    assert not np.allclose(proba[0], proba[1])
    gaps = ModelMetadata.model_validate_json((tmp_path / "gaps" / "model.json").read_text())
    # The lineage digest is the data's as read (what a snapshot of it reports), not of the
    # labelled rows only.
    snap = run_all(
        tmp_path,
        {
            "snap": [
                "snapshot",
                "--source",
                str(files / "gaps.csv"),
                "--format",
                "csv",
                "--out",
                str(tmp_path / "snaps"),
            ]
        },
    )["snap"]
    assert snap.code == 0, snap.stderr
    assert gaps.lineage.data_digest == snap.summary["digest"]


def test_spec_files_search_space_and_late_failures(files, tmp_path):
    def spec(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text(
            "datasetRef: {name: d}\nmodelName: m\ntask: classification\ntarget: y\n"
            "estimator: {className: DecisionTreeClassifier}\n" + body
        )
        return str(path)

    data = str(files / "bool.csv")
    cases = {
        "no-depth": (
            spec("s1.yaml", "search: {space: {depth: [1, 2]}}\n"),
            2,
            "search.space: DecisionTreeClassifier has no parameter 'depth'",
        ),
        "dataset-manifest": (str(ROOT / "examples" / "dataset.yaml"), 2, "not a TrainingJob"),
    }
    commands = {
        k: ["train", "--spec", s, "--data", data, "--out", str(tmp_path / k)]
        for k, (s, _, _) in cases.items()
    }
    commands["flags-and-spec"] = [*commands["no-depth"], "--seed", "7"]
    # The output folder cannot be made (a file is in the way): the run fails after training,
    # still with a summary.
    commands["unwritable"] = train_args(files / "bool.csv", files / "a-file" / "model")
    # A data problem found after reading: exit 2, one line, the summary says why.
    commands["continuous"] = train_args(files / "continuous.csv", tmp_path / "continuous")
    runs = run_all(tmp_path, commands)
    for key, (_, code, message) in cases.items():
        assert runs[key].code == code, (key, runs[key].stderr)
        assert message in runs[key].stderr, (key, runs[key].stderr)
        assert not (tmp_path / key).exists()
    assert runs["flags-and-spec"].code == 2
    assert "--seed cannot be combined with --spec" in runs["flags-and-spec"].stderr
    bad = runs["continuous"]
    assert bad.code == 2, bad.stderr
    message = "column 'y': classification labels must be integers or text, found"
    assert bad.stderr.startswith(f"error: {message}")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert json.loads(bad.termination) == bad.summary
    assert message in bad.summary["reason"]
    assert not (tmp_path / "continuous").exists()
    late = runs["unwritable"]
    assert late.code == 1, late.stderr
    assert late.summary["status"] == "failed"
    assert late.summary["reason"].startswith("internal error:")
    assert "Traceback" in late.stderr


def test_snapshot_of_known_content_in_a_new_format_adds_that_copy(files, tmp_path):
    frame = pd.read_csv(files / "text.csv")
    frame.to_parquet(tmp_path / "text.parquet", index=False)
    snaps = tmp_path / "snaps"

    def snap(source: Path, fmt: str) -> Run:
        cmd = ["snapshot", "--source", str(source), "--format", fmt, "--out", str(snaps)]
        return run_all(tmp_path, {fmt: cmd})[fmt]

    first = snap(files / "text.csv", "csv")
    second = snap(tmp_path / "text.parquet", "parquet")
    assert first.code == second.code == 0, (first.stderr, second.stderr)
    assert first.summary["digest"] == second.summary["digest"]
    folder = snaps / first.summary["digest"].removeprefix("sha256:")
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "data.parquet", "profile.json"]
    assert Path(second.summary["snapshot_uri"]).is_file()
    # The stored copy has the digest of its source.
    again = snap(Path(second.summary["snapshot_uri"]), "parquet")
    assert again.summary["digest"] == first.summary["digest"]


def test_snapshot_takes_the_schema_from_a_dataset_manifest(tmp_path):
    data = ROOT / "examples" / "data" / "breast-cancer.csv"
    runs = run_all(
        tmp_path,
        {
            "ok": [
                "snapshot",
                "--source",
                str(data),
                "--format",
                "csv",
                "--out",
                str(tmp_path / "s"),
                "--schema",
                str(ROOT / "examples" / "dataset.yaml"),
            ]
        },
    )
    assert runs["ok"].code == 0, runs["ok"].stderr
    assert runs["ok"].summary["rows"] == 569
