"""A Dataset fed by a deployment's feedback: the claim it reads, and its snapshot Job."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kubeloop.api.v1alpha1 import DatasetSpec, PredictionLogPVC
from kubeloop.operator import builders
from kubeloop.operator.feedbacksource import NOT_FOUND, UNUSABLE, log_claim
from kubeloop.operator.settings import OperatorSettings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "dataset-feedback.yaml"


def example() -> tuple[dict, dict]:
    docs = {d["kind"]: d for d in yaml.safe_load_all(EXAMPLE.read_text())}
    for doc in docs.values():
        doc["metadata"].update(namespace="ml", uid="0123456789abcdef", generation=1)
    return docs["ModelDeployment"], docs["Dataset"]


def test_the_example_deployment_logs_to_a_claim_with_the_inputs():
    md, ds = example()
    assert ds["spec"]["source"]["feedback"]["deploymentRef"]["name"] == md["metadata"]["name"]
    assert log_claim(md["metadata"]["name"], md) == PredictionLogPVC(
        claim_name="prediction-logs", path="breast-cancer"
    )


@pytest.mark.parametrize(
    ("plog", "reason", "names"),
    [
        (None, UNUSABLE, "spec.predictionLog (sink pvc, includeInputs true)"),
        ({"sink": "stdout", "includeInputs": True}, UNUSABLE, "spec.predictionLog.sink pvc"),
        ({"sink": "pvc", "pvc": {"claimName": "logs"}}, UNUSABLE,
         "spec.predictionLog.includeInputs true"),
    ],
)  # fmt: skip
def test_a_deployment_without_a_claim_and_inputs_is_named_with_its_field(plog, reason, names):
    md, _ = example()
    md = copy.deepcopy(md)
    md["spec"].pop("predictionLog")
    if plog is not None:
        md["spec"]["predictionLog"] = plog
    found = log_claim("breast-cancer-logged", md)
    assert isinstance(found, tuple)
    assert found[0] == reason
    assert names in found[1]
    assert found[1].startswith("ModelDeployment breast-cancer-logged")
    assert log_claim("gone", None)[0] == NOT_FOUND


def test_the_snapshot_job_mounts_the_deployments_claim_read_only_and_joins_it():
    md, ds = example()
    ds["spec"]["source"]["feedback"]["versionColumn"] = "model_version"
    settings = OperatorSettings(volume_claim="kubeloop-data", artifact_root="file:///data/kl")
    claim = log_claim(md["metadata"]["name"], md)
    assert isinstance(claim, PredictionLogPVC)
    spec = DatasetSpec.model_validate(ds["spec"])
    job = builders.build_snapshot_job(ds, spec, 0, settings, claim)
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:5] == ["snapshot", "--source", f"feedback:{builders.FEEDBACK_LOG_DIR}",
                        "--target", "target"]  # fmt: skip
    flags = dict(zip(args[5::2], args[6::2], strict=False))
    assert flags["--max-age"] == "720h"
    assert flags["--max-bytes"] == str(256 * 1024**2)
    assert flags["--version-column"] == "model_version"
    assert flags["--format"] == "parquet"
    volume = next(v for v in pod["volumes"] if v["name"] == "feedback")
    assert volume["persistentVolumeClaim"] == {"claimName": "prediction-logs", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "feedback")
    assert mount == {"name": "feedback", "mountPath": builders.FEEDBACK_LOG_DIR,
                     "readOnly": True, "subPath": "breast-cancer"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"target": None}, "source.feedback needs target"),
        ({"versionColumn": "target"}, "versionColumn must differ from target"),
        ({"uri": "file:///x.csv"}, "exactly one of source.path, source.uri, source.sql or "
         "source.feedback"),
    ],
)  # fmt: skip
def test_the_rules_of_a_feedback_source(change, says):
    _, ds = example()
    spec = copy.deepcopy(ds["spec"])
    if "target" in change:
        spec.pop("target")
    if "versionColumn" in change:
        spec["source"]["feedback"]["versionColumn"] = change["versionColumn"]
    if "uri" in change:
        spec["source"]["uri"] = change["uri"]
    with pytest.raises(ValueError, match=says):
        DatasetSpec.model_validate(spec)
    assert DatasetSpec.model_validate(ds["spec"]).snapshot_format == "parquet"
