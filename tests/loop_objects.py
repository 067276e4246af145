"""A small loop of the four kinds, as the API server returns them: the examples with the
status a running operator would have written. Shared by the unit tests of the status view
and the cluster test that stores them in a real API server and runs `kubeloop status`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIGEST = "sha256:" + "ab12" * 16
NOW = "2026-12-03T08:00:00Z"


def example(kind: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"{kind.lower()}.yaml").read_text())


def ready(status: str = "True", reason: str = "Ready", message: str = "") -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }


def loop() -> dict[str, list[dict[str, Any]]]:
    """breast-cancer: a Dataset, a hand-made and a retrain TrainingJob, versions 1 (stable)
    and 2 (canary at 10 %, failing its analysis), 3 (rolled back earlier, Rejected)."""
    ds = example("Dataset")
    ds["status"] = {
        "version": DIGEST,
        "rows": 569,
        "history": [{"version": DIGEST, "rows": 569, "time": NOW}],
        "conditions": [ready()],
    }
    first = example("TrainingJob")
    first["metadata"]["creationTimestamp"] = "2026-12-03T07:00:00Z"
    first["status"] = {
        "phase": "Succeeded",
        "datasetVersion": DIGEST,
        "metrics": {"accuracy": 0.96, "f1": 0.97},
        "conditions": [ready()],
    }
    retrain = copy.deepcopy(first)
    retrain["metadata"].update(
        name="breast-cancer-retrain-1",
        labels={"kubeloop.io/model-deployment": "breast-cancer"},
        creationTimestamp="2026-12-03T07:30:00Z",
    )
    retrain["status"] = {
        "phase": "Rejected",
        "reason": "challenger worse",
        "comparison": {
            "metric": "accuracy",
            "tolerance": 0.01,
            "passed": False,
            "reason": "Worse",
            "message": "accuracy 0.612 < champion 0.960 - 0.01",
        },
        "conditions": [ready("False", "ChallengerWorse")],
    }
    versions = [version(n) for n in (1, 2, 3)]
    versions[0]["metadata"]["labels"]["served-by.kubeloop.io/breast-cancer"] = "stable"
    versions[1]["metadata"]["labels"]["served-by.kubeloop.io/breast-cancer"] = "canary"
    versions[2]["status"]["conditions"].append(
        {
            **ready("True", "AnalysisFailed", "3 of 3 checks failed: shift 0.9154 > 0.1"),
            "type": "Rejected",
        }
    )
    md = deployment()
    return {
        "datasets": [ds],
        "trainingjobs": [first, retrain],
        "modelversions": versions,
        "modeldeployments": [md],
    }


def version(number: int) -> dict[str, Any]:
    mv = example("ModelVersion")
    mv["metadata"] = {"name": f"breast-cancer-v{number}", "labels": {}}
    mv["spec"].update(
        modelName="breast-cancer",
        version=number,
        metrics={"accuracy": 0.9 + number / 100},
        lineage={
            "dataset": "breast-cancer",
            "datasetVersion": DIGEST,
            "trainingJob": "breast-cancer-rf",
            "image": "kubeloop-trainer:0.1.0",
        },
    )
    mv["status"] = {"conditions": [ready()]}
    return mv


def deployment() -> dict[str, Any]:
    """Version 1 stable, version 2 a canary at 10 % failing its analysis; one retrain."""
    md = example("ModelDeployment")
    md["status"] = {
        "phase": "Progressing",
        "stableVersion": 1,
        "canaryVersion": 2,
        "canaryWeight": 10,
        "canary": {
            "analysis": {
                "failedChecks": 1,
                "lastResult": "Fail",
                "results": [
                    {"name": "errors", "value": 0.0, "result": "Pass"},
                    {"name": "shift", "value": 0.5, "result": "Fail", "message": "shift 0.5 > 0.1"},
                ],
            }
        },
        "lastRetrain": {
            "time": "2026-12-03T07:30:00Z",
            "trainingJob": "breast-cancer-retrain-1",
            "trigger": "alert",
        },
        "conditions": [ready()],
    }
    return md
