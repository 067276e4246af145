"""Desired child objects, built by pure functions from a parent and the settings.

Nothing here talks to the API server: handlers call these builders, then
create or apply the result. Every child gets a deterministic name, an owner
reference to its parent and the ``app.kubernetes.io`` labels.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from kubeloop.api.base import API_VERSION
from kubeloop.api.v1alpha1 import DatasetSpec, ModelDeploymentSpec, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import EXIT_BAD_INPUT, EXIT_REJECTED, JobResult
from kubeloop.operator.names import child_name
from kubeloop.operator.settings import OperatorSettings

MANAGED_BY = "kubeloop"
SPEC_ANNOTATION = "kubeloop.io/spec"
SPEC_DIR = "/etc/kubeloop"
TRAINER_CONTAINER = "trainer"
SERVER_CONTAINER = "server"
ROUTING_FILE = "routing.json"


def owner_reference(parent: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to ``parent``, so deletion cascades."""
    return {
        "apiVersion": parent.get("apiVersion", API_VERSION),
        "kind": parent["kind"],
        "name": parent["metadata"]["name"],
        "uid": parent["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(component: str, **extra: str) -> dict[str, str]:
    """Standard labels of a child object."""
    return {
        "app.kubernetes.io/name": f"kubeloop-{component}",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **extra,
    }


def _meta(parent: dict[str, Any], name: str, lbls: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": parent["metadata"]["namespace"],
        "labels": lbls,
        "ownerReferences": [owner_reference(parent)],
    }


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts)


def dataset_out_uri(settings: OperatorSettings, namespace: str, name: str) -> str:
    """Where snapshots of one Dataset are written (each under its digest)."""
    return _join(settings.artifact_root, "datasets", namespace, name)


def model_out_uri(settings: OperatorSettings, namespace: str, tj_name: str, uid: str) -> str:
    """Where one TrainingJob writes its artifacts (unique per TrainingJob object)."""
    return _join(settings.artifact_root, "models", namespace, f"{tj_name}-{uid[:8]}")


def _security_context() -> dict[str, Any]:
    """The restricted Pod Security profile, with a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes(
    settings: OperatorSettings, spec_annotation: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if settings.volume_claim:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": settings.volume_claim}}
        )
        mounts.append({"name": "data", "mountPath": settings.volume_mount_path})
    if spec_annotation:
        # The pod's own annotation, as a file: no ConfigMap to create or clean up.
        volumes.append(
            {
                "name": "spec",
                "downwardAPI": {
                    "items": [
                        {
                            "path": "spec.json",
                            "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"},
                        }
                    ]
                },
            }
        )
        mounts.append({"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
    return volumes, mounts


def _job(
    parent: dict[str, Any],
    name: str,
    lbls: dict[str, str],
    args: list[str],
    settings: OperatorSettings,
    *,
    image: str,
    spec_json: str | None,
    resources: dict[str, Any],
    backoff_limit: int,
    active_deadline_seconds: int | None,
) -> dict[str, Any]:
    volumes, mounts = _volumes(settings, spec_json is not None)
    pod_meta: dict[str, Any] = {"labels": lbls}
    if spec_json is not None:
        pod_meta["annotations"] = {SPEC_ANNOTATION: spec_json}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": image,
                "imagePullPolicy": settings.image_pull_policy,
                "args": args,
                "env": [{"name": "KUBELOOP_TERMINATION_LOG", "value": "/dev/termination-log"}],
                "resources": resources,
                "securityContext": _security_context(),
                # The Job result (kubeloop.contracts.results) is the whole message.
                "terminationMessagePolicy": "File",
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    job_spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        # Bad input and a gate rejection are verdicts, not crashes: never retry them.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER_CONTAINER,
                        "operator": "In",
                        "values": [EXIT_BAD_INPUT, EXIT_REJECTED],
                    },
                }
            ]
        },
        "template": {"metadata": pod_meta, "spec": pod_spec},
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(parent, name, lbls),
        "spec": job_spec,
    }


def snapshot_job_name(dataset: dict[str, Any], round_: int) -> str:
    """The snapshot Job of one refresh round of a Dataset's current generation."""
    return child_name(
        dataset["metadata"]["name"], f"snap-g{dataset['metadata']['generation']}-{round_}"
    )


def build_snapshot_job(
    dataset: dict[str, Any], spec: DatasetSpec, round_: int, settings: OperatorSettings
) -> dict[str, Any]:
    """The Job that runs ``kubeloop snapshot`` for a Dataset."""
    meta = dataset["metadata"]
    source = spec.source.uri or spec.source.path or ""
    args = [
        "snapshot",
        "--source",
        source,
        "--format",
        spec.format,
        "--out",
        dataset_out_uri(settings, meta["namespace"], meta["name"]),
    ]
    spec_json = None
    if spec.data_schema is not None:
        spec_json = json.dumps(spec.data_schema.to_wire(), sort_keys=True)
        args += ["--schema", f"{SPEC_DIR}/spec.json"]
    return _job(
        dataset,
        snapshot_job_name(dataset, round_),
        labels("snapshot", **{"kubeloop.io/dataset": meta["name"]}),
        args,
        settings,
        image=settings.trainer_image,
        spec_json=spec_json,
        resources=settings.trainer_resources,
        backoff_limit=1,
        active_deadline_seconds=3600,
    )


def trainer_job_name(tj: dict[str, Any]) -> str:
    """One trainer Job per TrainingJob object (the uid guards against a same-named successor)."""
    return child_name(tj["metadata"]["name"], f"train-{tj['metadata']['uid'][:5]}")


def build_trainer_job(
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    data_uri: str,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The Job that runs ``kubeloop train`` for a TrainingJob on one data snapshot."""
    meta = tj["metadata"]
    args = [
        "train",
        "--spec",
        f"{SPEC_DIR}/spec.json",
        "--data",
        data_uri,
        "--out",
        model_out_uri(settings, meta["namespace"], meta["name"], meta["uid"]),
    ]
    resources = spec.resources.to_wire() if spec.resources else settings.trainer_resources
    return _job(
        tj,
        trainer_job_name(tj),
        labels(
            "trainer",
            **{"kubeloop.io/training-job": meta["name"], "kubeloop.io/model": spec.model_name},
        ),
        args,
        settings,
        image=spec.image or settings.trainer_image,
        spec_json=json.dumps(spec.to_wire(), sort_keys=True),
        resources=resources,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
    )


def build_model_version(
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    version: int,
    name: str,
    summary: JobResult,
    data_version: str,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ModelVersion a successful TrainingJob publishes.

    ``summary`` is the trainer's termination summary; ``metadata`` is its
    ``model.json`` when the operator could read it (for the tensor schema).
    """
    meta = tj["metadata"]
    mv_spec: dict[str, Any] = {
        "modelName": spec.model_name,
        "version": version,
        "task": spec.task,
        "artifact": {"uri": summary.artifact_uri, "sha256": summary.sha256},
        "metrics": summary.metrics or {},
        "lineage": {
            "dataset": spec.dataset_ref.name,
            "datasetVersion": data_version,
            "trainingJob": meta["name"],
            "params": spec.estimator.params or {},
        },
    }
    if summary.profile_uri:
        mv_spec["profileUri"] = summary.profile_uri
    if metadata:
        mv_spec["inputs"] = metadata.get("inputs", [])
        mv_spec["outputs"] = metadata.get("outputs", [])
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            **_meta(
                tj,
                name,
                {
                    "kubeloop.io/model": spec.model_name,
                    "kubeloop.io/training-job-uid": meta["uid"],
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                },
            ),
        },
        "spec": mv_spec,
    }


# ----------------------------------------------------------------------- serving


def serving_names(md_name: str) -> dict[str, str]:
    """Names of everything a ModelDeployment owns."""
    return {
        "stable": child_name(md_name, "stable"),
        "canary": child_name(md_name, "canary"),
        "service": md_name,
        "canary_service": child_name(md_name, "canary"),
        "routing": child_name(md_name, "routing"),
    }


def build_serving_deployment(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    mv: dict[str, Any],
    role: str,
    replicas: int,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The stable or canary Deployment serving one ModelVersion."""
    names = serving_names(md["metadata"]["name"])
    mv_spec = mv["spec"]
    version = str(mv_spec["version"])
    selector = {
        "kubeloop.io/model-deployment": md["metadata"]["name"],
        "kubeloop.io/role": role,
    }
    lbls = labels("serving", **selector, **{"app.kubernetes.io/version": version})
    port = settings.serving_port
    args = [
        "serve",
        "--model",
        ArtifactLayout.model_dir(mv_spec["artifact"]["uri"]),
        "--name",
        spec.model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    env: list[dict[str, Any]] = [{"name": "KUBELOOP_SERVING_MODEL_VERSION", "value": version}]
    drift = spec.monitoring.drift if spec.monitoring else None
    if drift is not None:
        env += [
            {"name": "KUBELOOP_SERVING_DRIFT_THRESHOLD", "value": str(drift.threshold)},
            {"name": "KUBELOOP_SERVING_DRIFT_WINDOW", "value": str(drift.window)},
        ]
        if drift.features:
            env.append(
                {"name": "KUBELOOP_SERVING_DRIFT_FEATURES", "value": ",".join(drift.features)}
            )
    volumes, mounts = _volumes(settings, spec_annotation=False)
    if role == "stable":
        volumes.append(
            {"name": "routing", "configMap": {"name": names["routing"], "optional": True}}
        )
        mounts.append({"name": "routing", "mountPath": f"{SPEC_DIR}/routing", "readOnly": True})
        env.append(
            {"name": "KUBELOOP_SERVING_ROUTING_FILE", "value": f"{SPEC_DIR}/routing/{ROUTING_FILE}"}
        )
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5}
    pod_spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [
            {
                "name": SERVER_CONTAINER,
                "image": spec.image or settings.serving_image,
                "imagePullPolicy": settings.image_pull_policy,
                "args": args,
                "env": env,
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": probe,
                "livenessProbe": {
                    "httpGet": {"path": "/v2/health/live", "port": "http"},
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                },
                "resources": spec.resources.to_wire()
                if spec.resources
                else settings.serving_resources,
                "securityContext": _security_context(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, names[role], lbls),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": lbls,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def build_service(md: dict[str, Any], role: str, settings: OperatorSettings) -> dict[str, Any]:
    """The Service in front of the stable (``role="stable"``) or canary pods."""
    names = serving_names(md["metadata"]["name"])
    name = names["service"] if role == "stable" else names["canary_service"]
    selector = {"kubeloop.io/model-deployment": md["metadata"]["name"], "kubeloop.io/role": role}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, name, labels("serving", **selector)),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": settings.serving_port, "targetPort": "http"}],
        },
    }


def service_url(md: dict[str, Any], settings: OperatorSettings, role: str = "stable") -> str:
    """In-cluster URL of a Service built by :func:`build_service`."""
    names = serving_names(md["metadata"]["name"])
    name = names["service"] if role == "stable" else names["canary_service"]
    return f"http://{name}.{md['metadata']['namespace']}.svc:{settings.serving_port}"


def build_routing_config(
    md: dict[str, Any], weight: int, canary_version: int | None, settings: OperatorSettings
) -> dict[str, Any]:
    """The ConfigMap the stable pods watch for the canary's share of requests."""
    names = serving_names(md["metadata"]["name"])
    routing = {
        "canary_url": service_url(md, settings, "canary") if canary_version else None,
        "weight": weight if canary_version else 0,
        "canary_version": canary_version,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(md, names["routing"], labels("serving")),
        "data": {ROUTING_FILE: json.dumps(routing, sort_keys=True)},
    }


def build_hpa(md: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """A HorizontalPodAutoscaler for the stable pods, when autoscaling is asked for."""
    if spec.autoscaling is None:
        return None
    names = serving_names(md["metadata"]["name"])
    scaling = spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, names["stable"], labels("serving")),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names["stable"],
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
