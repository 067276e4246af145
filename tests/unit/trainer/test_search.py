"""Random search: the trials drawn, their record in model.json, reproducibility, and
lower-is-better metrics reported as themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from kubeloop.api.v1alpha1 import TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata
from kubeloop.progress import JsonProgress
from kubeloop.trainer import train


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:240, [0, 1, 2, 3, -1]]
    diabetes = load_diabetes(as_frame=True).frame.iloc[:240]
    paths = {"classification": root / "c.csv", "regression": root / "r.csv"}
    cancer.to_csv(paths["classification"], index=False)
    diabetes.to_csv(paths["regression"], index=False)
    return paths


def run_search(path: Path, out: Path, task: str, estimator: str, search: dict) -> ModelMetadata:
    spec = TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "modelName": "m",
            "task": task,
            "target": "target",
            "estimator": {"className": estimator},
            "search": search,
        }
    )
    train.train(train.Run(spec=spec, data_uri=str(path), out=str(out), name="m"))
    return ModelMetadata.model_validate_json((out / ArtifactLayout.METADATA).read_text())


def test_random_search_draws_the_trials_asked_for_reproducibly(files, tmp_path):
    search = {
        "strategy": "random",
        "space": {"max_depth": [1, 2, 3, 4, 6, 8], "min_samples_leaf": [1, 2, 5, 10]},
        "trials": 4,
        "cv": 2,
    }
    metas = [
        run_search(
            files["classification"],
            tmp_path / name,
            "classification",
            "DecisionTreeClassifier",
            search,
        )
        for name in ("a", "b")
    ]
    trials = metas[0].search
    assert trials is not None
    assert len(trials) == 4
    for trial in trials:
        assert trial["params"]["max_depth"] in search["space"]["max_depth"]
        assert trial["params"]["min_samples_leaf"] in search["space"]["min_samples_leaf"]
    best = min(trials, key=lambda t: t["rank"])
    assert best["score"] == max(t["score"] for t in trials)  # accuracy: higher is better
    assert metas[0].lineage.params["max_depth"] == best["params"]["max_depth"]
    assert metas[1].search == trials
    assert metas[1].metrics == metas[0].metrics


def test_lower_is_better_metrics_rank_the_smallest_first(files, tmp_path):
    meta = run_search(
        files["regression"],
        tmp_path / "r",
        "regression",
        "Ridge",
        {"strategy": "grid", "space": {"alpha": [0.01, 1.0, 1000.0]}, "cv": 3, "metric": "rmse"},
    )
    assert meta.search is not None
    best = min(meta.search, key=lambda t: t["rank"])
    assert all(t["score"] > 0 for t in meta.search)  # reported as rmse, not negated
    assert best["score"] == min(t["score"] for t in meta.search)
    assert meta.lineage.params["alpha"] == best["params"]["alpha"]


@pytest.mark.parametrize(
    ("search", "trials"),
    [
        ({"strategy": "grid", "space": {"max_depth": [1, 2, 3]}, "cv": 2}, 3),
        # more trials asked for than the grid holds: scikit-learn tries the grid
        (
            {"strategy": "random", "space": {"max_depth": [1, 2], "min_samples_leaf": [1, 5]},
             "trials": 10, "cv": 3},
            4,
        ),
    ],
)  # fmt: skip
def test_progress_counts_each_candidate_once(files, tmp_path, search, trials):
    spec = TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "modelName": "m",
            "task": "classification",
            "target": "target",
            "estimator": {"className": "DecisionTreeClassifier"},
            "search": search,
        }
    )
    assert train.candidates(spec.search) == trials
    stream = io.StringIO()
    run = train.Run(spec=spec, data_uri=str(files["classification"]), out=str(tmp_path), name="m")
    train.train(run, JsonProgress(stream))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    ended = {e["stage"]: e for e in events if e["event"] == "end"}
    assert (ended["search"]["done"], ended["search"]["total"]) == (trials, trials)
    assert ended["reading data"]["done"] == 240
    meta = ModelMetadata.model_validate_json((tmp_path / ArtifactLayout.METADATA).read_text())
    assert len(meta.search or []) == trials
