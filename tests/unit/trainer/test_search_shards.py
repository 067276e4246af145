"""A search across pods, in one process: the plan is the in-process search's, the shards'
trials are its trials, the refitted winner is its model, byte for byte; a rerun shard
overwrites its files; a missing or foreign trial is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from kubeloop.api.v1alpha1 import Search, TrainingJobSpec
from kubeloop.contracts import search as contract
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.trainer import shards, train
from kubeloop.trainer.errors import DataError

SPACE = {"max_depth": [1, 2, 3, 4, 6], "min_samples_leaf": [1, 2, 5, 10]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:240, [0, 1, 2, 3, -1]]
    diabetes = load_diabetes(as_frame=True).frame.iloc[:200]
    paths = {"classification": root / "c.csv", "regression": root / "r.csv"}
    cancer.to_csv(paths["classification"], index=False)
    diabetes.to_csv(paths["regression"], index=False)
    return paths


def spec_of(task: str, estimator: str, search: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "modelName": "m",
            "task": task,
            "target": "target",
            "estimator": {"className": estimator},
            "search": search,
        }
    )


def run(spec: TrainingJobSpec, data: Path, out: Path, **extra: Any) -> train.Run:
    return train.Run(spec=spec, data_uri=str(data), out=str(out), name="m", **extra)


def serial_and_parallel(
    spec: TrainingJobSpec, data: Path, root: Path, pods: int
) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
    """model.json of the in-process search and of the search across ``pods`` shards."""
    train.train(run(spec, data, root / "serial"))
    folder = root / "search"
    for shard in range(pods):
        shards.run_shard(run(spec, data, folder), shard, pods)
    trials = shards.read_trials(str(folder), spec)
    train.train(run(spec, data, root / "parallel", trials=trials))
    serial, parallel = (
        json.loads((root / d / "model.json").read_text()) for d in ("serial", "parallel")
    )
    return serial, parallel, root / "serial", root / "parallel"


@pytest.mark.parametrize("strategy", ["grid", "random"])
def test_plan_is_the_in_process_search_order(strategy):
    search = Search.model_validate({"strategy": strategy, "space": SPACE, "trials": 7})
    grid = {f"estimator__{k}": v for k, v in SPACE.items()}
    pipe = Pipeline([("estimator", DecisionTreeClassifier())])
    searcher = (
        GridSearchCV(pipe, grid, cv=2)
        if strategy == "grid"
        else RandomizedSearchCV(pipe, grid, n_iter=7, cv=2, random_state=42)
    )
    x, y = load_breast_cancer(return_X_y=True)
    searcher.fit(x[:80], y[:80])
    expected = [
        {k.removeprefix("estimator__"): v for k, v in p.items()}
        for p in searcher.cv_results_["params"]
    ]
    assert shards.plan(search, 42) == expected
    assert len(expected) == contract.candidate_count(search)


@pytest.mark.parametrize(
    ("task", "estimator", "search", "pods"),
    [
        ("classification", "DecisionTreeClassifier", {"space": SPACE, "cv": 3}, 3),
        (
            "classification",
            "DecisionTreeClassifier",
            {"strategy": "random", "space": SPACE, "trials": 7},
            4,
        ),
        (
            "regression",
            "DecisionTreeRegressor",
            {"space": {"max_depth": [2, 3, 5]}, "metric": "rmse"},
            2,
        ),
    ],
    ids=["grid", "random", "rmse"],
)
def test_shards_give_the_serial_winner_trials_and_model(
    files, tmp_path, task, estimator, search, pods
):
    spec = spec_of(task, estimator, search)
    serial, parallel, serial_dir, parallel_dir = serial_and_parallel(
        spec, files[task], tmp_path, pods
    )
    assert parallel["search"] == serial["search"]
    assert parallel["lineage"]["params"] == serial["lineage"]["params"]
    assert parallel["metrics"] == serial["metrics"]
    onnx = ArtifactLayout.MODEL
    assert (parallel_dir / onnx).read_bytes() == (serial_dir / onnx).read_bytes()
    if search.get("metric") == "rmse":  # lower is better, reported as itself
        assert all(t["score"] > 0 for t in parallel["search"])


def test_a_rerun_shard_overwrites_its_trials(files, tmp_path):
    spec = spec_of("classification", "DecisionTreeClassifier", {"space": SPACE})
    folder = tmp_path / "search"
    for shard in (0, 1, 1):  # shard 1 "lost" after writing, and rerun
        shards.run_shard(run(spec, files["classification"], folder), shard, 2)
    names = sorted(p.name for p in (folder / contract.TRIALS_DIR).iterdir())
    assert names == [f"{i:05d}.json" for i in range(20)]
    assert [t.index for t in shards.read_trials(str(folder), spec)] == list(range(20))


def test_missing_and_foreign_trials_are_refused(files, tmp_path):
    spec = spec_of("classification", "DecisionTreeClassifier", {"space": SPACE})
    folder = tmp_path / "search"
    with pytest.raises(DataError, match="no trials"):
        shards.read_trials(str(folder), spec)
    shards.run_shard(run(spec, files["classification"], folder), 0, 2)
    with pytest.raises(DataError, match="10 of 20 trials missing"):
        shards.read_trials(str(folder), spec)
    other = spec_of("classification", "DecisionTreeClassifier", {"space": {"max_depth": [7, 9]}})
    with pytest.raises(DataError, match="not a candidate of this search"):
        shards.read_trials(str(folder), other)


def test_ties_go_to_the_lower_candidate_as_in_scikit_learn():
    trials = [
        contract.Trial(index=i, params={"c": i}, metric="accuracy", folds=[s], score=s)
        for i, s in enumerate([0.5, 0.9, None, 0.9, 0.1])
    ]
    best = contract.winner(trials)
    assert best is not None
    assert best.index == 1
    assert contract.ranks(trials) == [3, 1, 5, 1, 4]
    assert contract.winner([trials[2]]) is None
    rmse = contract.Trial(index=0, params={}, metric="rmse", folds=[-2.0], score=-2.0)
    assert rmse.value == 2.0


def test_shards_and_pods_never_outnumber_candidates():
    search = Search.model_validate({"space": {"a": [1, 2, 3]}, "parallelism": 8})
    assert contract.shard_pods(search) == 3
    assert [list(contract.shard_indexes(i, 3, 7)) for i in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    random = Search.model_validate({"strategy": "random", "space": SPACE, "trials": 50})
    assert contract.candidate_count(random) == 20
