"""The champion/challenger gate through the operator, against the real API server.

The trainer pods are played here (see test_operator): the real ``kubeloop train``
runs with the arguments the operator gave its Job, so the champion it scores is the
model directory the operator resolved.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetest import wait_for
from operator_harness import Cluster
from test_operator import (  # the fixtures and helpers of the operator's own tests
    data_csv,
    dataset_ready_fast,
    example,
    play_kubelet,
    snapshot_ready,
    train,
    training_job,
)

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator import retrain
from kubeloop.operator.builders import DEPLOYMENT_LABEL
from kubeloop.operator.timestamps import parse

pytestmark = pytest.mark.cluster
__all__ = ["data_csv"]  # a fixture, used by name


def deployment(cluster: Cluster, name: str, model: str) -> dict[str, Any]:
    """A ModelDeployment of ``model`` whose retrain template trains it on Dataset cancer."""
    md = example("ModelDeployment", modelName=model, replicas=1)
    md["metadata"]["name"] = name
    md["spec"].pop("canary")
    md["spec"]["retrain"]["template"] = training_job("template", modelName=model)["spec"]
    # on the Dataset's current version: these retrains are about the gate, not the data
    md["spec"]["retrain"]["template"]["datasetRef"]["fresh"] = False
    cluster.apply(md)
    return md


def retrain_job(cluster: Cluster, md_name: str) -> str:
    """Create the TrainingJob a scheduled retrain of ``md_name`` creates; its name."""
    md = cluster.get("ModelDeployment", md_name)
    assert md is not None
    trigger = retrain.Trigger.from_tick(parse("2026-01-01T00:00:00Z"))
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    tj = retrain.build_training_job(md, spec, trigger, None)
    cluster.apply(tj)
    return str(tj["metadata"]["name"])


def args_of(cluster: Cluster, tj_name: str) -> list[str]:
    job = cluster.wait_job(f"kubeloop.io/training-job={tj_name}")
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_retrain_is_compared_with_the_served_version(cluster, operator, data_csv, tmp_path):
    snapshot_ready(cluster, data_csv, tmp_path)
    train(cluster, tmp_path, "champ")
    served = cluster.get("ModelVersion", "cancer-v1")
    assert served is not None
    deployment(cluster, "cancer", "cancer")
    cluster.wait_phase("ModelDeployment", "cancer", "Serving", timeout=90)
    assert cluster.status("ModelDeployment", "cancer")["stableVersion"] == 1

    name = retrain_job(cluster, "cancer")
    assert cluster.get("TrainingJob", name)["spec"]["gate"]["compareTo"]["policy"] == "Serving"
    args = args_of(cluster, name)
    artifact = served["spec"]["artifact"]
    assert args[args.index("--champion") + 1] == ArtifactLayout.model_dir(artifact["uri"])
    assert args[args.index("--champion-version") + 1] == "1"
    assert args[args.index("--champion-sha256") + 1] == artifact["sha256"]

    code, message = play_kubelet(cluster, f"kubeloop.io/training-job={name}", tmp_path)
    assert code == 0, message
    status = cluster.wait_phase("TrainingJob", name, "Succeeded")
    comparison = status["comparison"]
    assert comparison["passed"] is True
    assert comparison["reason"] == "NotWorse"  # the same data and estimator: equal
    assert comparison["champion"]["version"] == 1
    assert comparison["metric"] == "accuracy"
    assert comparison["challenger"]["value"] == status["metrics"]["accuracy"]
    assert comparison["champion"]["value"] == pytest.approx(comparison["challenger"]["value"])
    mv = cluster.get("ModelVersion", status["modelVersion"])
    assert mv is not None
    assert mv["spec"]["version"] == 2
    assert mv["spec"]["comparison"] == comparison


def test_first_model_has_no_champion_and_says_so(cluster, operator, data_csv, tmp_path):
    snapshot_ready(cluster, data_csv, tmp_path)
    deployment(cluster, "fresh", "fresh")
    name = retrain_job(cluster, "fresh")
    assert "--champion" not in args_of(cluster, name)
    code, message = play_kubelet(cluster, f"kubeloop.io/training-job={name}", tmp_path)
    assert code == 0, message
    status = cluster.wait_phase("TrainingJob", name, "Succeeded")
    assert status["comparison"]["reason"] == "NoChampion"
    assert "champion" not in status["comparison"]
    assert "no champion" in cluster.condition("TrainingJob", name)["message"]
    mv = cluster.get("ModelVersion", status["modelVersion"])
    assert mv is not None
    assert mv["spec"]["comparison"]["reason"] == "NoChampion"


def test_serving_without_the_label_is_invalid(cluster, operator, data_csv, tmp_path):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    cluster.apply(training_job("unlabelled", gate={"compareTo": {"policy": "Serving"}}))
    condition = wait_for(
        lambda: (
            cluster.condition("TrainingJob", "unlabelled").get("reason") == "InvalidSpec"
            and cluster.condition("TrainingJob", "unlabelled")
        ),
        "InvalidSpec",
        state=lambda: cluster.get("TrainingJob", "unlabelled"),
    )
    assert condition["message"].startswith("spec.gate.compareTo.policy: ")
    assert DEPLOYMENT_LABEL in condition["message"]
    assert cluster.list("Job", "batch/v1", "kubeloop.io/training-job=unlabelled") == []


def test_a_schema_change_rejects_with_its_reason(cluster, operator, data_csv, tmp_path):
    """The trainer's SchemaChanged verdict (reported here without running it) reaches the
    TrainingJob's status and condition; nothing is published."""
    dataset_ready_fast(cluster, data_csv, tmp_path)
    cluster.apply(training_job("renamed", gate={"compareTo": {"policy": "None"}}))
    why = "champion v1 takes columns missing from the data: 'mean radius'"
    result = {
        "kind": "train",
        "status": "rejected",
        "reason": f"SchemaChanged: {why}",
        "comparison": {
            "metric": "accuracy",
            "tolerance": 0.01,
            "champion": {"version": 1, "metric": "accuracy"},
            "passed": False,
            "reason": "SchemaChanged",
            "message": why,
        },
    }
    override = (3, json.dumps(result))
    play_kubelet(cluster, "kubeloop.io/training-job=renamed", tmp_path, override=override)
    status = cluster.wait_phase("TrainingJob", "renamed", "Rejected")
    assert status["comparison"]["reason"] == "SchemaChanged"
    assert status["reason"].startswith("SchemaChanged: ")
    assert cluster.condition("TrainingJob", "renamed")["reason"] == "SchemaChanged"
    assert cluster.list("ModelVersion") == []
