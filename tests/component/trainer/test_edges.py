"""`kubeloop train` and `kubeloop snapshot` on the awkward cases: label types, missing text,
specs from manifests, runs that fail late, shared snapshot folders. (What fails before
training is covered function by function in tests/unit/trainer/test_run_checks.py.)

Independent runs go out concurrently (a few real processes at a time) to keep the tier fast.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    MISSING_TEXT,
    ArtifactLayout,
    ModelMetadata,
    Profile,
)

ROOT = Path(__file__).resolve().parents[3]


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
    (root / "a-file").write_text("not a folder")
    return root


def metadata_of(out: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((out / ArtifactLayout.METADATA).read_text())


def check_label_run(key: str, run, out: Path) -> None:
    """A run kept parity, made text or integer labels as its target says, and profiled the
    missing text it saw as missing."""
    assert run.code == 0, (key, run.stderr)
    meta = metadata_of(out)
    assert meta.parity is not None
    assert meta.parity.passed, key
    label = next(o for o in meta.outputs if o.name == LABEL_OUTPUT)
    if key == "text":
        assert meta.classes == ["down", "up"]
        assert label.datatype == "BYTES"
    else:  # booleans and whole-number floats become integer labels
        assert meta.classes == [0, 1]
        assert label.datatype == "INT64"
    profile = Profile.model_validate_json((out / ArtifactLayout.PROFILE).read_text())
    colour = profile.features["colour"]
    assert colour.kind == "categorical"
    assert colour.missing > 0
    assert MISSING_TEXT not in colour.frequencies  # the profile counts the data, not stand-ins


def check_missing_text_is_not_unseen_text(out: Path) -> None:
    """The convention: a missing text value is fed as "missing", and differs from unseen text."""
    sess = ort.InferenceSession(str(out / ArtifactLayout.MODEL), providers=["CPUExecutionProvider"])
    feeds = {
        "x": np.array([[0.1], [0.1], [0.1]], dtype=np.float32),
        "colour": np.array([[MISSING_TEXT], ["never-seen"], ["red"]], dtype=object),
    }
    _, proba = sess.run(None, feeds)
    assert proba.shape == (3, 2)
    assert not np.allclose(proba[0], proba[1])


def test_label_types_and_missing_text_keep_parity(files, tmp_path, kubeloop_all):
    runs = kubeloop_all(
        {
            "bool": train_args(files / "bool.csv", tmp_path / "bool"),
            "gaps": train_args(files / "gaps.csv", tmp_path / "gaps"),
            "text": train_args(
                files / "text.csv",
                tmp_path / "text",
                estimator="LogisticRegression",
                params="{}",
            ),
            # The lineage digest is the data's as read (what a snapshot of it reports), not
            # of the labelled rows only.
            "snap": [
                *("snapshot", "--source", str(files / "gaps.csv"), "--format", "csv"),
                *("--out", str(tmp_path / "snaps")),
            ],
        },
    )
    for key in ("bool", "gaps", "text"):
        check_label_run(key, runs[key], tmp_path / key)
    # Readable by other users (the serving pod need not run as the trainer's uid).
    for path in [tmp_path / "bool", *(tmp_path / "bool").iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & stat.S_IROTH, (path, oct(mode))
    check_missing_text_is_not_unseen_text(tmp_path / "text")
    snap = runs["snap"]
    assert snap.code == 0, snap.stderr
    assert metadata_of(tmp_path / "gaps").lineage.data_digest == snap.summary["digest"]


def test_spec_files_search_space_and_late_failures(files, tmp_path, kubeloop_all):
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
    runs = kubeloop_all(commands)
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


def test_snapshot_of_known_content_in_a_new_format_adds_that_copy(files, tmp_path, snapshot):
    frame = pd.read_csv(files / "text.csv")
    frame.to_parquet(tmp_path / "text.parquet", index=False)
    snaps = tmp_path / "snaps"

    first = snapshot(files / "text.csv", "csv", snaps)
    second = snapshot(tmp_path / "text.parquet", "parquet", snaps)
    assert first.code == second.code == 0, (first.stderr, second.stderr)
    assert first.summary["digest"] == second.summary["digest"]
    folder = Path(ArtifactLayout.snapshot_dir(str(snaps), first.summary["digest"]))
    copies = [ArtifactLayout.data_file("csv"), ArtifactLayout.data_file("parquet")]
    assert sorted(p.name for p in folder.iterdir()) == [*copies, ArtifactLayout.PROFILE]
    assert Path(second.summary["snapshot_uri"]).is_file()
    # The stored copy has the digest of its source.
    again = snapshot(second.summary["snapshot_uri"], "parquet", snaps)
    assert again.summary["digest"] == first.summary["digest"]


def test_snapshot_takes_the_schema_from_a_dataset_manifest(tmp_path, snapshot):
    data = ROOT / "examples" / "data" / "breast-cancer.csv"
    manifest = str(ROOT / "examples" / "dataset.yaml")
    result = snapshot(data, "csv", tmp_path / "s", "--schema", manifest)
    assert result.code == 0, result.stderr
    assert result.summary["rows"] == 569
