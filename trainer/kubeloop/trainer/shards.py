"""A search across pods, trainer side: one shard's trials, and reading them all back.

:func:`plan` is the candidate list the in-process search (``GridSearchCV`` or
``RandomizedSearchCV`` seeded with the split seed) tries, in its order; :func:`run_shard`
cross-validates shard ``i``'s share of it on the same training rows and folds and writes
each trial to the store (:mod:`kubeloop.contracts.search`); :func:`read_trials` reads them
back, checked against the plan, for the run that refits the winner
(:attr:`kubeloop.trainer.train.Run.trials`). The same seed gives the same winner as the
in-process search, fold score for fold score.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from typing import Any

import fsspec
import numpy as np
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import ParameterGrid, ParameterSampler, cross_validate
from sklearn.pipeline import Pipeline

from kubeloop.api.v1alpha1 import Search, TrainingJobSpec
from kubeloop.contracts import search as contract
from kubeloop.contracts.results import JobResult
from kubeloop.progress import Progress
from kubeloop.trainer import model, output
from kubeloop.trainer import train as training
from kubeloop.trainer.errors import DataError


def plan(search: Search, seed: int) -> list[dict[str, Any]]:
    """Every candidate (estimator parameter values), in the in-process search's order."""
    grid = {f"{model.ESTIMATOR_STEP}__{k}": v for k, v in search.space.items()}
    if search.strategy == "grid":
        drawn: list[dict[str, Any]] = list(ParameterGrid(grid))
    else:
        with warnings.catch_warnings():  # more trials than the grid holds: the grid, as sklearn
            warnings.simplefilter("ignore", UserWarning)
            drawn = list(ParameterSampler(grid, n_iter=search.trials, random_state=seed))
    prefix = f"{model.ESTIMATOR_STEP}__"
    return [{k.removeprefix(prefix): training._plain(v) for k, v in c.items()} for c in drawn]


def metric_of(spec: TrainingJobSpec) -> str:
    """The metric the search ranks by."""
    search = spec.search
    return (search.metric if search else None) or contract.default_metric(spec.task)


def run_shard(
    run: training.Run, shard: int, shards: int, progress: Progress | None = None
) -> JobResult:
    """Cross-validate shard ``shard`` of ``shards``'s candidates; write one file each to
    ``run.out`` (the search's directory). Rerunning overwrites the same files."""
    spec, shown = run.spec, progress or Progress()
    search = spec.search
    if search is None:
        raise model.SpecError("--search-shards needs spec.search")
    training.check_gate_metrics(spec)
    estimator = model.make_estimator(
        spec.task, spec.estimator.class_name, dict(spec.estimator.params or {}), spec.split.seed
    )
    shown.stage("reading data", unit="rows")
    data = training.load_data(run)
    shown.advance(len(data.frame))
    training.check_before_fit(spec, estimator, data.y)
    split = training.split_rows(spec, data)
    pipeline = model.build_pipeline(data.features, estimator)
    candidates = plan(search, spec.split.seed)
    mine = contract.shard_indexes(shard, shards, len(candidates))
    shown.stage(f"search shard {shard + 1} of {shards}", total=len(mine), unit="trials")
    for index in mine:
        trial = cross_validated(pipeline, index, candidates[index], split, search.cv, spec)
        write_trial(run.out, trial)
        shown.advance(1)
    shown.done()
    return JobResult(kind="search", status="succeeded", trials=len(mine))


def cross_validated(
    pipeline: Pipeline,
    index: int,
    params: dict[str, Any],
    split: training.TrainTest,
    folds: int,
    spec: TrainingJobSpec,
) -> contract.Trial:
    """One candidate scored on each fold, as ``GridSearchCV`` scores it (same folds, same
    scorer, the mean taken the same way)."""
    metric = metric_of(spec)
    candidate = clone(pipeline).set_params(
        **{f"{model.ESTIMATOR_STEP}__{k}": v for k, v in params.items()}
    )
    try:
        scores = cross_validate(
            candidate,
            split.x_train,
            split.y_train,
            cv=folds,
            scoring=get_scorer(training.SCORERS[metric]),
            error_score=np.nan,
        )["test_score"]
    except ValueError as exc:
        if "fits failed" not in str(exc):
            raise model.SpecError(f"search: {exc}") from exc
        scores = np.full(folds, np.nan)
    values = np.asarray(scores, dtype=np.float64).reshape(1, -1)
    mean = float(np.average(values, axis=1)[0])
    return contract.Trial(
        index=index,
        params=params,
        metric=metric,
        folds=[None if np.isnan(v) else float(v) for v in values[0]],
        score=None if np.isnan(mean) else mean,
    )


def write_trial(search_dir: str, trial: contract.Trial) -> None:
    """Write (or overwrite) one trial's file, never visible half-written."""
    uri = contract.trial_uri(search_dir, trial.index)
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with output.staging() as tmp:
        local = tmp / "trial.json"
        local.write_text(trial.model_dump_json())
        output.add(local, uri)


def read_trials(search_dir: str, spec: TrainingJobSpec) -> list[contract.Trial]:
    """Every trial of the search, in candidate order; DataError when one is missing or does
    not belong to this spec's plan (a folder left by another search)."""
    if spec.search is None:
        raise model.SpecError("--trials needs spec.search")
    candidates = plan(spec.search, spec.split.seed)
    folder = contract.trials_dir(search_dir)
    fs, path = fsspec.core.url_to_fs(folder)
    try:
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".json"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no trials (the search wrote none)") from None
    trials = []
    for name in names:
        with fs.open(name, "rt") as handle:
            trial = contract.Trial.model_validate(json.load(handle))
        if trial.index >= len(candidates) or trial.params != candidates[trial.index]:
            raise DataError(f"{name}: trial {trial.index} is not a candidate of this search")
        trials.append(trial)
    gaps = contract.missing(trials, len(candidates))
    if gaps:
        raise DataError(
            f"{folder}: {len(gaps)} of {len(candidates)} trials missing (first: {gaps[0]})"
        )
    return sorted(trials, key=lambda t: t.index)
