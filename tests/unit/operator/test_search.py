"""A search across pods, operator side: the Indexed Job it builds and the pure verdict on
the trial files (the winner, or why there is none) that decides what happens next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubeloop.api.v1alpha1 import SearchStatus, TrainingJobSpec
from kubeloop.contracts import search as contract
from kubeloop.contracts.results import EXIT_BAD_INPUT, EXIT_REJECTED
from kubeloop.operator import builders
from kubeloop.operator.handlers import search
from kubeloop.operator.settings import OperatorSettings
from kubeloop.operator.store import count_json, list_json

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SEARCH = {"space": {"max_depth": [3, 5, 8], "min_samples_leaf": [1, 5]}, "parallelism": 4}


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(artifact_root="file:///data/kubeloop")


def training_job(**search_updates: object) -> tuple[dict, TrainingJobSpec]:
    doc = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())
    doc["metadata"].update(name="demo", namespace="ml", uid="0123456789abcdef", generation=1)
    doc["spec"]["search"] = {**SEARCH, **search_updates}
    return doc, TrainingJobSpec.model_validate(doc["spec"])


def trial(index: int, score: float | None) -> contract.Trial:
    return contract.Trial(
        index=index, params={"max_depth": index}, metric="accuracy", folds=[score], score=score
    )


def test_search_job_is_indexed_one_pod_per_shard_retried_per_index(settings):
    tj, spec = training_job()
    job = builders.build_search_job(tj, spec, "file:///data/snap/data.csv", settings)
    assert job["metadata"]["name"] == builders.search_job_name(tj) == "demo-search-01234"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "0123456789abcdef"
    body = job["spec"]
    assert body["completionMode"] == "Indexed"
    assert (body["completions"], body["parallelism"]) == (4, 4)
    assert (body["backoffLimitPerIndex"], body["maxFailedIndexes"]) == (spec.backoff_limit, 0)
    assert "backoffLimit" not in body  # the limit is per index
    assert body["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [
        EXIT_BAD_INPUT,
        EXIT_REJECTED,
    ]
    pod = body["template"]
    args = pod["spec"]["containers"][0]["args"]
    out = builders.search_dir_uri(settings, "ml", "demo", "0123456789abcdef")
    assert args == [
        *("train", "--spec", builders.SPEC_PATH, "--data", "file:///data/snap/data.csv"),
        *("--out", out, "--search-shards", "4"),
    ]
    assert out == "file:///data/kubeloop/searches/ml/demo-01234567"
    trainer_out = builders.model_out_uri(settings, "ml", "demo", "0123456789abcdef")
    assert not out.startswith(trainer_out)  # the trainer replaces its folder whole
    annotation = pod["metadata"]["annotations"][builders.SPEC_ANNOTATION]
    assert json.loads(annotation) == spec.to_wire()


def test_search_job_runs_no_more_pods_than_candidates(settings):
    tj, spec = training_job(parallelism=50)
    job = builders.build_search_job(tj, spec, "file:///d.csv", settings)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 6
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "6"


def test_only_a_spec_with_parallelism_searches_across_pods():
    assert search.parallel(training_job()[1])
    assert not search.parallel(training_job(parallelism=None)[1])


def test_judge_names_the_winner_once_every_trial_is_in():
    trials = [trial(i, s) for i, s in enumerate([0.90, 0.95, 0.95, None, 0.5, 0.7])]
    verdict = search.judge(trials, 6)
    assert verdict.winner is not None
    assert verdict.winner.index == 1
    assert verdict.problem is None


def test_judge_refuses_missing_trials_and_a_search_with_no_score():
    verdict = search.judge([trial(0, 0.9), trial(2, 0.8)], 9)
    assert verdict.winner is None
    assert verdict.problem == "7 of 9 trials missing from the store (1, 3, 4, 5, 6, …)"
    failed = search.judge([trial(0, None), trial(1, None)], 2)
    assert failed.problem == "every one of the 2 candidates failed to fit"


def test_progress_is_the_status_the_crd_declares():
    _, spec = training_job()
    status = search.progress("demo-search-01234", spec, 6, trial(1, 0.95))
    parsed = SearchStatus.model_validate(status)
    assert (parsed.pods, parsed.trials, parsed.done, parsed.metric) == (4, 6, 6, "accuracy")
    assert parsed.winner is not None
    assert (parsed.winner.index, parsed.winner.score) == (1, 0.95)
    assert parsed.winner.params == {"max_depth": 1}
    assert "winner" not in search.progress("j", spec, 2)


def test_the_operator_reads_and_counts_trial_files(tmp_path):
    folder = tmp_path / "trials"
    assert list_json(folder.as_uri()) == []
    assert count_json(folder.as_uri()) == 0
    folder.mkdir()
    for index in (1, 0):
        (folder / f"{index:05d}.json").write_text(trial(index, 0.5).model_dump_json())
    (folder / ".00002.json.123").write_text("{")  # a file being written
    found = search.parse_trials(list_json(folder.as_uri()))
    assert [t.index for t in found] == [0, 1]
    assert count_json(folder.as_uri()) == 2
