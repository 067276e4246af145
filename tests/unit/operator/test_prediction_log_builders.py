"""spec.predictionLog rendered onto the stable and canary serving pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator import builders
from kubeloop.operator.settings import OperatorSettings
from kubeloop.serving.settings import ENV_PREFIX, ServingSettings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SETTINGS = OperatorSettings(volume_claim="kubeloop-data", artifact_root="file:///data/kubeloop")
PVC = {"sink": "pvc", "pvc": {"claimName": "pred-logs", "path": "demo/preds"}}


def deployment(role: str, plog: dict[str, Any] | None) -> dict[str, Any]:
    md = yaml.safe_load((EXAMPLES / "modeldeployment.yaml").read_text())
    md["metadata"].update(name="demo", namespace="ml", uid="0123456789abcdef", generation=1)
    if plog is not None:
        md["spec"]["predictionLog"] = plog
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    uri = f"file:///data/kubeloop/models/ml/x/{ArtifactLayout.MODEL}"
    mv = {"spec": {"version": 2, "artifact": {"uri": uri, "sha256": "2" * 64}}}
    return builders.build_serving_deployment(md, spec, mv, role, 1, SETTINGS)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return found


def env(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(dep)["env"]}


def server_settings(dep: dict[str, Any], pod_name: str) -> ServingSettings:
    """What the server reads from the rendered env, with ``$(VAR)`` expanded as the
    kubelet does (from variables defined earlier in the list)."""
    seen: dict[str, str] = {}
    for e in container(dep)["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"].get("fieldRef", {})
            if ref.get("fieldPath") == "metadata.name":
                seen[e["name"]] = pod_name
            continue
        value = e["value"]
        for name, known in seen.items():
            value = value.replace(f"$({name})", known)
        seen[e["name"]] = value
    serving = {k[len(ENV_PREFIX) :].lower(): v for k, v in seen.items() if k.startswith(ENV_PREFIX)}
    serving.setdefault("model", "/models/m")  # given on the command line, not in env
    return ServingSettings.model_validate(serving)


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_stdout_sink_sets_the_log_rate_and_inputs(role):
    dep = deployment(role, {"sampleRate": 0.25, "includeInputs": True})
    read = server_settings(dep, "demo-stable-abc")
    assert read.prediction_log == "-"
    assert read.prediction_log_sample_rate == 0.25
    assert read.prediction_log_inputs == 1.0
    assert not [
        v
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v and v["name"] == "prediction-log"
    ]


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_pvc_sink_mounts_the_claim_and_names_the_file_by_pod(role):
    dep = deployment(role, {**PVC, "maxFileBytes": 8 * 1024**2, "keepFiles": 5})
    pod = dep["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "prediction-log"]
    assert volume == {"name": "prediction-log", "persistentVolumeClaim": {"claimName": "pred-logs"}}
    (mount,) = [m for m in container(dep)["volumeMounts"] if m["name"] == "prediction-log"]
    assert mount == {
        "name": "prediction-log",
        "mountPath": builders.PREDICTION_LOG_DIR,
        "subPath": "demo/preds",
    }
    read = server_settings(dep, "demo-stable-7d9f-x2k")
    assert read.prediction_log == f"{builders.PREDICTION_LOG_DIR}/demo-stable-7d9f-x2k.jsonl"
    assert read.prediction_log_max_bytes == 8 * 1024**2
    assert read.prediction_log_keep == 5
    assert read.prediction_log_inputs == 0.0
    names = [e["name"] for e in container(dep)["env"]]
    # the kubelet expands $(NAME) only from variables defined before
    assert names.index(builders.POD_NAME_ENV) < names.index("KUBELOOP_SERVING_PREDICTION_LOG")


def test_pvc_sink_at_the_claims_root_has_no_sub_path():
    dep = deployment("stable", {"sink": "pvc", "pvc": {"claimName": "pred-logs"}})
    (mount,) = [m for m in container(dep)["volumeMounts"] if m["name"] == "prediction-log"]
    assert "subPath" not in mount


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_without_the_field_pods_have_no_log_and_no_volume(role):
    dep = deployment(role, None)
    assert not [k for k in env(dep) if "PREDICTION_LOG" in k or k == builders.POD_NAME_ENV]
    assert not [
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "prediction-log"
    ]
    assert server_settings(dep, "p").prediction_log is None


def test_every_rendered_setting_is_known_to_the_server():
    dep = deployment("stable", PVC)
    known = {f"{ENV_PREFIX}{name}".upper() for name in ServingSettings.model_fields}
    written = {k for k in env(dep) if k.startswith(ENV_PREFIX)}
    assert written <= known, sorted(written - known)


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_object_store_sink_ships_from_an_empty_dir_under_the_pods_name(role):
    plog = {"sink": "objectStore", "uri": "s3://logs/demo", "maxFileBytes": 2 * 1024**2}
    dep = deployment(role, {**plog, "keepFiles": 3})
    (volume,) = [
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "prediction-log"
    ]
    assert volume == {"name": "prediction-log", "emptyDir": {"sizeLimit": str(4 * 2 * 1024**2)}}
    (mount,) = [m for m in container(dep)["volumeMounts"] if m["name"] == "prediction-log"]
    assert mount == {"name": "prediction-log", "mountPath": builders.PREDICTION_LOG_DIR}
    read = server_settings(dep, "demo-stable-7d9f-x2k")
    assert read.prediction_log == f"{builders.PREDICTION_LOG_DIR}/demo-stable-7d9f-x2k.jsonl"
    assert read.prediction_log_upload == "s3://logs/demo"
    assert read.pod_name == "demo-stable-7d9f-x2k"
    assert read.prediction_log_max_bytes == 2 * 1024**2
