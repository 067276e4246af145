"""Champion resolution: which model a TrainingJob's challenger must beat (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubeloop.api.v1alpha1 import ModelDeploymentSpec, TrainingJobSpec
from kubeloop.contracts.results import JobResult
from kubeloop.operator import builders, retrain
from kubeloop.operator.champion import Champion, resolve
from kubeloop.operator.handlers.trainingjob import rejection_reason
from kubeloop.operator.settings import OperatorSettings


def spec(compare: dict[str, Any] | None) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "task": "classification",
            "target": "y",
            "modelName": "cancer",
            "estimator": {"className": "LogisticRegression"},
            **({"gate": {"compareTo": compare}} if compare else {}),
        }
    )


def tj(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "t", "namespace": "ns", "uid": "u-1", "labels": labels or {}}}


def mv(version: int, model: str = "cancer") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{model}-v{version}"},
        "spec": {
            "modelName": model,
            "version": version,
            "artifact": {"uri": f"s3://b/{model}/{version}/model.onnx", "sha256": "ab" * 32},
        },
    }


def md(stable: int | None, model: str = "cancer") -> dict[str, Any]:
    status = {"stableVersion": stable} if stable is not None else {}
    return {"metadata": {"name": "web"}, "spec": {"modelName": model}, "status": status}


LABELLED = tj({builders.DEPLOYMENT_LABEL: "web"})
VERSIONS = [mv(1), mv(2), mv(2, "other")]


def test_serving_is_the_deployments_stable_version():
    found = resolve(LABELLED, spec({"policy": "Serving"}), md(2), VERSIONS)
    assert found.outcome == "champion"
    assert found.champion == Champion("s3://b/cancer/2", 2, "ab" * 32)
    assert found.champion.args() == [
        *("--champion", "s3://b/cancer/2", "--champion-version", "2"),
        *("--champion-sha256", "ab" * 32),
    ]


def test_serving_reads_the_deployments_model():
    found = resolve(LABELLED, spec({"policy": "Serving"}), md(2, "other"), VERSIONS)
    assert found.champion is not None
    assert found.champion.uri == "s3://b/other/2"


def test_serving_without_the_label_is_an_invalid_spec_naming_the_field():
    found = resolve(tj(), spec({"policy": "Serving"}), None, VERSIONS)
    assert found.outcome == "invalid"
    assert found.message.startswith("spec.gate.compareTo.policy: ")
    assert builders.DEPLOYMENT_LABEL in found.message


def test_serving_before_any_stable_version_has_no_champion():
    found = resolve(LABELLED, spec({"policy": "Serving"}), md(None), VERSIONS)
    assert (found.outcome, found.champion) == ("no-champion", None)
    assert found.message.startswith("no champion")


@pytest.mark.parametrize(
    ("deployment", "versions", "says"),
    [(None, VERSIONS, "ModelDeployment web"), (md(7), VERSIONS, "cancer v7")],
)
def test_serving_waits_for_what_it_names(deployment, versions, says):
    found = resolve(LABELLED, spec({"policy": "Serving"}), deployment, versions)
    assert found.outcome == "waiting"
    assert says in found.message


def test_version_is_that_version_of_the_same_model():
    found = resolve(tj(), spec({"policy": "Version", "version": 1}), None, VERSIONS)
    assert found.champion == Champion("s3://b/cancer/1", 1, "ab" * 32)
    missing = resolve(tj(), spec({"policy": "Version", "version": 9}), None, VERSIONS)
    assert missing.outcome == "waiting"


@pytest.mark.parametrize("compare", [None, {"policy": "None"}])
def test_none_compares_with_nothing(compare):
    found = resolve(LABELLED, spec(compare), md(2), VERSIONS)
    assert (found.outcome, found.champion) == ("none", None)


def test_trainer_job_passes_the_champion_arguments():
    body = {"kind": "TrainingJob", **LABELLED}
    champion = Champion("s3://b/cancer/2", 2, "ab" * 32)
    job = builders.build_trainer_job(
        body, spec({"policy": "Serving"}), "s3://d.csv", OperatorSettings(), champion.args()
    )
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--champion") + 1] == "s3://b/cancer/2"
    assert args[args.index("--champion-version") + 1] == "2"
    without = builders.build_trainer_job(body, spec(None), "s3://d.csv", OperatorSettings())
    assert "--champion" not in without["spec"]["template"]["spec"]["containers"][0]["args"]


def deployment_with(template_gate: dict[str, Any] | None) -> ModelDeploymentSpec:
    template = spec(None).to_wire()
    if template_gate is not None:
        template["gate"] = template_gate
    return ModelDeploymentSpec.model_validate(
        {"modelName": "cancer", "retrain": {"template": template}}
    )


@pytest.mark.parametrize(
    ("template_gate", "policy"),
    [
        (None, "Serving"),
        ({"min": {"accuracy": 0.8}}, "Serving"),
        ({"compareTo": {"policy": "None"}}, "None"),
        ({"compareTo": {"policy": "Version", "version": 1}}, "Version"),
    ],
)
def test_retrains_compare_with_the_served_version_unless_the_template_says(template_gate, policy):
    trigger = retrain.Trigger.from_tick(retrain.parse("2026-01-01T00:00:00Z"))
    body = {"metadata": {"name": "web", "namespace": "ns"}}
    created = retrain.build_training_job(body, deployment_with(template_gate), trigger, None)
    assert created["spec"]["gate"]["compareTo"]["policy"] == policy
    assert created["metadata"]["labels"][builders.DEPLOYMENT_LABEL] == "web"
    if template_gate and "min" in template_gate:
        assert created["spec"]["gate"]["min"] == {"accuracy": 0.8}


@pytest.mark.parametrize(
    ("comparison", "reason"),
    [
        (None, "GateRejected"),
        ({"passed": True, "reason": "NotWorse"}, "GateRejected"),  # a threshold failed
        ({"passed": False, "reason": "Worse"}, "ChallengerWorse"),
        ({"passed": False, "reason": "SchemaChanged"}, "SchemaChanged"),
    ],
)
def test_a_rejected_run_names_the_comparison_that_failed(comparison, reason):
    doc: dict[str, Any] = {"kind": "train", "status": "rejected"}
    if comparison is not None:
        doc["comparison"] = {"metric": "accuracy", "tolerance": 0.01, **comparison}
    assert rejection_reason(JobResult.model_validate(doc)) == reason


NEWEST = "sha256:" + "c" * 64
PINNED = "sha256:" + "d" * 64


@pytest.mark.parametrize(
    ("template_ref", "expected"),
    [
        ({"name": "d"}, {"name": "d", "fresh": True}),  # the default: a snapshot newer than it
        ({"name": "d", "fresh": True}, {"name": "d", "fresh": True}),
        ({"name": "d", "fresh": False}, {"name": "d", "fresh": False, "version": NEWEST}),
        ({"name": "d", "version": PINNED}, {"name": "d", "version": PINNED}),
    ],
)
def test_a_retrain_trains_on_fresh_data_unless_its_template_says(template_ref, expected):
    template = spec(None).to_wire()
    template["datasetRef"] = template_ref
    md = ModelDeploymentSpec.model_validate(
        {"modelName": "cancer", "retrain": {"template": template}}
    )
    trigger = retrain.Trigger.from_tick(retrain.parse("2026-01-01T00:00:00Z"))
    body = {"metadata": {"name": "web", "namespace": "ns"}}
    created = retrain.build_training_job(body, md, trigger, NEWEST)
    assert created["spec"]["datasetRef"] == expected
