"""The champion/challenger decision, its default metric and which comparison a run makes."""

from __future__ import annotations

import math

import pytest

from kubeloop.api.v1alpha1 import TrainingJobSpec, compare_metric
from kubeloop.trainer import champion, train

REF = champion.ChampionRef("file:///models/m/v3", version=3)


@pytest.mark.parametrize(
    ("metric", "theirs", "mine", "tolerance", "passed"),
    [
        ("accuracy", 0.90, 0.95, 0.01, True),  # better
        ("accuracy", 0.90, 0.90, 0.0, True),  # equal, no slack
        ("accuracy", 0.90, 0.89, 0.01, True),  # worse by exactly the tolerance
        ("accuracy", 0.90, 0.889, 0.01, False),  # worse by more
        ("r2", 0.5, -0.2, 0.5, False),
        ("f1", 0.7, 0.3, 0.5, True),
        ("rmse", 10.0, 9.0, 0.01, True),  # lower is better
        ("rmse", 10.0, 10.01, 0.01, True),
        ("rmse", 10.0, 10.02, 0.01, False),
        ("mae", 1.0, 1.5, 0.0, False),
        ("log_loss", 0.3, 0.2, 0.0, True),
        ("accuracy", 0.9, math.nan, 0.01, False),  # an undefined challenger never passes
        ("rmse", math.nan, 3.0, 0.01, True),
        ("log_loss", math.inf, 0.5, 0.0, True),
    ],
)
def test_passes(metric, theirs, mine, tolerance, passed):
    assert champion.passes(metric, theirs, mine, tolerance) is passed


def test_verdict_states_both_numbers_and_the_bound():
    worse = champion.verdict(REF, "accuracy", 0.01, 0.93, 0.61)
    assert (worse.passed, worse.reason) == (False, "Worse")
    assert worse.champion is not None
    assert (worse.champion.version, worse.champion.value) == (3, 0.93)
    assert worse.challenger is not None
    assert worse.challenger.value == 0.61
    assert worse.message == "accuracy 0.6100 < champion v3 0.9300 - 0.01"
    lower = champion.verdict(REF, "rmse", 0.5, 40.0, 38.0)
    assert (lower.passed, lower.reason) == (True, "NotWorse")
    assert lower.message == "rmse 38.0000 <= champion v3 40.0000 + 0.5"


def test_no_champion_passes_and_says_so():
    verdict = champion.verdict(None, "r2", 0.01, None, 0.4)
    assert (verdict.passed, verdict.reason, verdict.champion) == (True, "NoChampion", None)
    assert "no champion" in verdict.message


def test_a_metric_missing_for_either_model_fails():
    assert not champion.verdict(REF, "roc_auc", 0.01, None, 0.9).passed
    assert not champion.verdict(REF, "roc_auc", 0.01, 0.9, None).passed


def spec(task: str = "classification", **extra: object) -> TrainingJobSpec:
    estimator = "LogisticRegression" if task == "classification" else "Ridge"
    return TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "task": task,
            "target": "y",
            "modelName": "m",
            "estimator": {"className": estimator},
            **extra,
        }
    )


def test_metric_defaults_to_the_search_metric_then_the_task_default():
    serving = {"compareTo": {"policy": "Serving"}}
    assert compare_metric(spec(gate=serving)) == "accuracy"
    assert compare_metric(spec("regression", gate=serving)) == "r2"
    searched = {"space": {"C": [1.0]}, "metric": "f1"}
    assert compare_metric(spec(gate=serving, search=searched)) == "f1"
    named = {"compareTo": {"policy": "Serving", "metric": "log_loss"}}
    assert compare_metric(spec(gate=named, search=searched)) == "log_loss"


def test_which_comparison_a_run_makes():
    assert train.comparison_of(spec(), None) is None
    local = train.comparison_of(spec(), REF)  # a local --champion: the defaults
    assert local is not None
    assert local.tolerance == 0.01
    off = spec(gate={"compareTo": {"policy": "None"}})
    assert train.comparison_of(off, REF) is None
    own = spec(gate={"compareTo": {"policy": "Version", "version": 2, "tolerance": 0.2}})
    chosen = train.comparison_of(own, REF)
    assert chosen is not None
    assert chosen.tolerance == 0.2
