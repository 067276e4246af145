"""Desired child objects, built by pure functions from a parent and the settings.

Nothing here talks to the API server: handlers call these builders, then
create or apply the result. Every child gets a deterministic name, an owner
reference to its parent and the ``app.kubernetes.io`` labels — except a ModelVersion,
which is a registry entry and outlives the TrainingJob that made it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeloop.api.base import API_VERSION
from kubeloop.api.v1alpha1 import (
    DatasetSpec,
    ModelDeploymentSpec,
    PredictionLog,
    PredictionLogPVC,
    ServingGRPC,
    ServingTLS,
    TrainingJobSpec,
)
from kubeloop.contracts.artifacts import ArtifactLayout, join
from kubeloop.contracts.results import (
    EXIT_BAD_INPUT,
    EXIT_REJECTED,
    SOURCE_URL_ENV,
    TERMINATION_LOG,
    TERMINATION_LOG_ENV,
    JobResult,
)
from kubeloop.contracts.routing import ROUTING_FILE, RoutingConfig
from kubeloop.contracts.search import shard_pods
from kubeloop.contracts.storage import SOURCE_PREFIX, secret_env
from kubeloop.operator.names import child_name
from kubeloop.operator.settings import OperatorSettings

MANAGED_BY = "kubeloop"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: Labels that tie children to their parents (selectors and look-ups use them).
DATASET_LABEL = "kubeloop.io/dataset"
TRAINING_JOB_LABEL = "kubeloop.io/training-job"
TRAINING_JOB_UID_LABEL = "kubeloop.io/training-job-uid"
MODEL_LABEL = "kubeloop.io/model"
DEPLOYMENT_LABEL = "kubeloop.io/model-deployment"
ROLE_LABEL = "kubeloop.io/role"
#: ``served-by.kubeloop.io/<deployment>: stable|canary`` on each ModelVersion a
#: ModelDeployment serves: one key per deployment, since one version may serve several.
#: The chart's ValidatingAdmissionPolicy refuses to delete a version carrying one.
SERVED_BY_PREFIX = "served-by.kubeloop.io/"
SPEC_ANNOTATION = "kubeloop.io/spec"
SPEC_DIR = "/etc/kubeloop"
SPEC_FILE = "spec.json"
#: Where a Job's container reads the spec it runs (its pod annotation, as a file).
SPEC_PATH = f"{SPEC_DIR}/{SPEC_FILE}"
TRAINER_CONTAINER = "trainer"
SERVER_CONTAINER = "server"
ROUTING_DIR = f"{SPEC_DIR}/routing"
#: Where serving pods mount the spec.tls Secret (tls.crt, tls.key, ca.crt as cert-manager
#: names them).
TLS_DIR = f"{SPEC_DIR}/tls"
#: Mode of the mounted key pair: owner and group (the pod's fsGroup) read, nobody else.
TLS_FILE_MODE = 0o440
#: Where a serving pod finds its bearer token (the ModelDeployment's token Secret).
TOKEN_DIR = f"{SPEC_DIR}/token"
#: The key of the token in that Secret.
TOKEN_KEY = "token"
#: The user (and group) every container runs as; the images create it.
RUN_AS = 10001
#: Where serving pods mount spec.predictionLog.pvc's claim (at its path).
PREDICTION_LOG_DIR = "/var/log/kubeloop/predictions"
#: The pod-name variable the prediction log file is named by (downward API).
POD_NAME_ENV = "KUBELOOP_POD_NAME"
#: where a feedback source's snapshot Job mounts the deployment's prediction log (read-only)
FEEDBACK_LOG_DIR = "/var/lib/kubeloop/feedback"


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
        MANAGED_BY_LABEL: MANAGED_BY,
        **extra,
    }


def _meta(parent: dict[str, Any], name: str, lbls: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": parent["metadata"]["namespace"],
        "labels": lbls,
        "ownerReferences": [owner_reference(parent)],
    }


def dataset_out_uri(settings: OperatorSettings, namespace: str, name: str) -> str:
    """Where snapshots of one Dataset are written (each under its digest)."""
    return join(settings.artifact_root, "datasets", namespace, name)


def model_out_uri(settings: OperatorSettings, namespace: str, tj_name: str, uid: str) -> str:
    """Where one TrainingJob writes its artifacts (unique per TrainingJob object)."""
    return join(settings.artifact_root, "models", namespace, f"{tj_name}-{uid[:8]}")


def _security_context() -> dict[str, Any]:
    """The restricted Pod Security profile, with a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    settings: OperatorSettings,
    **extra: Any,
) -> dict[str, Any]:
    """A pod of one container, as the configured non-root user and ServiceAccount."""
    spec: dict[str, Any] = {
        **extra,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "fsGroup": RUN_AS},
        "containers": [{**container, "securityContext": _security_context()}],
        "volumes": volumes,
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def _spec_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's own spec annotation as a file: no ConfigMap to create or clean up."""
    item = {
        "path": SPEC_FILE,
        "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"},
    }
    return (
        {"name": "spec", "downwardAPI": {"items": [item]}},
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
    )


def _volumes(
    settings: OperatorSettings, spec_annotation: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A writable /tmp, the data volume when there is one, and the spec file when asked for."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if settings.volume_claim:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": settings.volume_claim}}
        )
        mounts.append({"name": "data", "mountPath": settings.volume_mount_path})
    if spec_annotation:
        volume, mount = _spec_volume()
        volumes.append(volume)
        mounts.append(mount)
    return volumes, mounts


def _pod_failure_policy() -> dict[str, Any]:
    """Bad input and a gate rejection are verdicts, not crashes: never retry them."""
    exit_codes = {
        "containerName": TRAINER_CONTAINER,
        "operator": "In",
        "values": [EXIT_BAD_INPUT, EXIT_REJECTED],
    }
    return {"rules": [{"action": "FailJob", "onExitCodes": exit_codes}]}


@dataclass(frozen=True)
class JobTemplate:
    """What differs between a snapshot Job and a trainer Job."""

    name: str
    labels: dict[str, str]
    args: list[str]
    image: str
    resources: dict[str, Any]
    backoff_limit: int
    active_deadline_seconds: int | None
    #: The spec the container reads from :data:`SPEC_PATH`, if any.
    spec_json: str | None = None
    #: Environment variables besides the termination-log path (e.g. from a Secret).
    env: tuple[dict[str, Any], ...] = ()
    #: More (volume, mount) pairs (a feedback source's prediction-log claim).
    volumes: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = ()


def _job(parent: dict[str, Any], job: JobTemplate, settings: OperatorSettings) -> dict[str, Any]:
    """A Job of one ``kubeloop`` container whose result is its termination message."""
    volumes, mounts = _volumes(settings, job.spec_json is not None)
    volumes += [volume for volume, _ in job.volumes]
    mounts += [mount for _, mount in job.volumes]
    pod_meta: dict[str, Any] = {"labels": job.labels}
    if job.spec_json is not None:
        pod_meta["annotations"] = {SPEC_ANNOTATION: job.spec_json}
    container = {
        "name": TRAINER_CONTAINER,
        "image": job.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": job.args,
        "env": [
            {"name": TERMINATION_LOG_ENV, "value": TERMINATION_LOG},
            *secret_env(settings.artifacts_secret),  # every Job reads or writes the store
            *job.env,
        ],
        "resources": job.resources,
        # The Job result (kubeloop.contracts.results) is the whole message.
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": job.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {
            "metadata": pod_meta,
            "spec": _pod_spec(container, volumes, settings, restartPolicy="Never"),
        },
    }
    if job.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = job.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(parent, job.name, job.labels),
        "spec": job_spec,
    }


def build_job(
    parent: dict[str, Any], job: JobTemplate, settings: OperatorSettings
) -> dict[str, Any]:
    """A Job of one ``kubeloop`` container, for the builders of other kinds
    (:mod:`kubeloop.operator.prediction`): the same store settings, artifacts Secret,
    security context and failure policy as the snapshot and trainer Jobs."""
    return _job(parent, job, settings)


def snapshot_job_name(dataset: dict[str, Any], round_: int | str) -> str:
    """The snapshot Job of one refresh round (or one snapshot request) of a Dataset's current
    generation."""
    return child_name(
        dataset["metadata"]["name"], f"snap-g{dataset['metadata']['generation']}-{round_}"
    )


def build_snapshot_job(
    dataset: dict[str, Any],
    spec: DatasetSpec,
    round_: int | str,
    settings: OperatorSettings,
    log_claim: PredictionLogPVC | None = None,
) -> dict[str, Any]:
    """The Job that runs ``kubeloop snapshot`` for a Dataset; a feedback source's Job
    mounts ``log_claim``, its deployment's prediction log, read-only."""
    meta = dataset["metadata"]
    out = dataset_out_uri(settings, meta["namespace"], meta["name"])
    args, env = _snapshot_source(spec)
    extra: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = ()
    if spec.source.feedback is not None:
        assert log_claim is not None  # the handler resolves the deployment's claim first
        args, extra = _feedback_source(spec), (_feedback_volume(log_claim),)
    args += ["--format", spec.snapshot_format, "--out", out]
    spec_json = None
    if spec.data_schema is not None:
        spec_json = json.dumps(spec.data_schema.to_wire(), sort_keys=True)
        args += ["--schema", SPEC_PATH]
    template = JobTemplate(
        name=snapshot_job_name(dataset, round_),
        labels=labels("snapshot", **{DATASET_LABEL: meta["name"]}),
        args=args,
        image=settings.trainer_image,
        resources=settings.trainer_resources,
        backoff_limit=1,
        active_deadline_seconds=3600,
        spec_json=spec_json,
        env=env,
        volumes=extra,
    )
    return _job(dataset, template, settings)


def _feedback_source(spec: DatasetSpec) -> list[str]:
    """The snapshot's arguments for a feedback source: the mounted log folder, the
    target column and the bounds."""
    fb = spec.source.feedback
    assert fb is not None
    assert spec.target is not None  # a CEL rule asks for it
    args = ["snapshot", "--source", f"feedback:{FEEDBACK_LOG_DIR}", "--target", spec.target]
    args += ["--max-age", fb.max_age, "--max-bytes", str(fb.max_bytes)]
    if fb.version_column:
        args += ["--version-column", fb.version_column]
    return args


def _feedback_volume(claim: PredictionLogPVC) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deployment's prediction-log claim, read-only, at its folder (``pvc.path``)."""
    volume = {
        "name": "feedback",
        "persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": True},
    }
    mount: dict[str, Any] = {"name": "feedback", "mountPath": FEEDBACK_LOG_DIR, "readOnly": True}
    if claim.path:
        mount["subPath"] = claim.path
    return volume, mount


def _snapshot_source(spec: DatasetSpec) -> tuple[list[str], tuple[dict[str, Any], ...]]:
    """The snapshot's source arguments and environment. A SQL source's URL (password
    included), or an object-store source's credentials, come from its Secret as
    environment variables: never in the arguments, and the operator never reads them."""
    sql = spec.source.sql
    if sql is None:
        # A source's own credentials, under the prefix that keeps them apart from the store's.
        own = spec.source.secret_ref
        creds = tuple(secret_env(own.name, prefix=SOURCE_PREFIX)) if own is not None else ()
        return ["snapshot", "--source", spec.source.uri or spec.source.path or ""], creds
    ref = {"name": sql.url_secret_ref.name, "key": sql.url_secret_ref.key}
    env = {"name": SOURCE_URL_ENV, "valueFrom": {"secretKeyRef": ref}}
    return ["snapshot", f"--query={sql.query}"], (env,)


def trainer_job_name(tj: dict[str, Any]) -> str:
    """One trainer Job per TrainingJob object (the uid guards against a same-named successor)."""
    return child_name(tj["metadata"]["name"], f"train-{tj['metadata']['uid'][:5]}")


def build_trainer_job(
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    data_uri: str,
    settings: OperatorSettings,
    champion_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The Job that runs ``kubeloop train`` for a TrainingJob on one data snapshot
    (``champion_args``: the ``--champion`` flags naming the model to beat, if any)."""
    meta = tj["metadata"]
    out = model_out_uri(settings, meta["namespace"], meta["name"], meta["uid"])
    template = JobTemplate(
        name=trainer_job_name(tj),
        labels=labels(
            "trainer", **{TRAINING_JOB_LABEL: meta["name"], MODEL_LABEL: spec.model_name}
        ),
        args=["train", "--spec", SPEC_PATH, "--data", data_uri, "--out", out, *champion_args],
        image=spec.image or settings.trainer_image,
        resources=spec.resources.to_wire() if spec.resources else settings.trainer_resources,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        spec_json=json.dumps(spec.to_wire(), sort_keys=True),
    )
    return _job(tj, template, settings)


def search_job_name(tj: dict[str, Any]) -> str:
    """The Indexed Job of a TrainingJob's search across pods (one per TrainingJob object)."""
    return child_name(tj["metadata"]["name"], f"search-{tj['metadata']['uid'][:5]}")


def search_dir_uri(settings: OperatorSettings, namespace: str, tj_name: str, uid: str) -> str:
    """Where a search across pods writes its trials: beside the model directory, which the
    trainer replaces whole when it publishes."""
    return join(settings.artifact_root, "searches", namespace, f"{tj_name}-{uid[:8]}")


def build_search_job(
    tj: dict[str, Any], spec: TrainingJobSpec, data_uri: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The Indexed Job whose pod ``i`` runs shard ``i`` of the search (``kubeloop train
    --search-shards N``, the index from ``JOB_COMPLETION_INDEX``). Each index is retried
    on its own (``backoffLimitPerIndex``: a lost pod's shard reruns, overwriting its trial
    files); one index out of retries fails the Job."""
    meta = tj["metadata"]
    if spec.search is None:
        raise ValueError("a search Job needs spec.search")
    pods = shard_pods(spec.search)
    out = search_dir_uri(settings, meta["namespace"], meta["name"], meta["uid"])
    template = JobTemplate(
        name=search_job_name(tj),
        labels=labels("search", **{TRAINING_JOB_LABEL: meta["name"], MODEL_LABEL: spec.model_name}),
        args=[
            *("train", "--spec", SPEC_PATH, "--data", data_uri, "--out", out),
            *("--search-shards", str(pods)),
        ],
        image=spec.image or settings.trainer_image,
        resources=spec.resources.to_wire() if spec.resources else settings.trainer_resources,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        spec_json=json.dumps(spec.to_wire(), sort_keys=True),
    )
    job = _job(tj, template, settings)
    job_spec = job["spec"]
    del job_spec["backoffLimit"]  # the limit is per index
    job_spec.update(
        completionMode="Indexed",
        completions=pods,
        parallelism=pods,
        backoffLimitPerIndex=spec.backoff_limit,
        maxFailedIndexes=0,
    )
    return job


def needs_inspection(mv_spec: dict[str, Any]) -> bool:
    """A hand-made ModelVersion naming neither inputs nor outputs: a Job in the trainer image
    (the operator has no onnxruntime) reads them from the graph into its status."""
    return not mv_spec.get("inputs") and not mv_spec.get("outputs")


def inspect_job_name(mv: dict[str, Any]) -> str:
    """One inspection Job per ModelVersion and artifact digest."""
    sha = mv["spec"]["artifact"]["sha256"]
    return child_name(mv["metadata"]["name"], f"inspect-{sha[:8]}")


def build_inspect_job(mv: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """The Job that runs ``kubeloop inspect`` on a ModelVersion's artifact (owned by the
    version, so it goes with it)."""
    artifact = mv["spec"]["artifact"]
    template = JobTemplate(
        name=inspect_job_name(mv),
        labels=labels("inspect", **{MODEL_LABEL: mv["spec"]["modelName"]}),
        args=["inspect", "--model", artifact["uri"], "--sha256", artifact["sha256"]],
        image=settings.trainer_image,
        resources=settings.trainer_resources,
        backoff_limit=1,
        active_deadline_seconds=600,
    )
    return _job(mv, template, settings)


@dataclass(frozen=True)
class Trained:
    """What a finished trainer Job tells about its model: the Job's result, the model's
    metadata file (:attr:`ArtifactLayout.METADATA`, None when unreadable), the data
    version and the image that trained it."""

    result: JobResult
    metadata: dict[str, Any] | None
    data_version: str
    image: str | None


def build_model_version(
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    version: int,
    name: str,
    trained: Trained,
) -> dict[str, Any]:
    """The ModelVersion a successful TrainingJob publishes.

    No owner reference: the version is a registry entry that may be serving, so deleting
    the TrainingJob must not delete it; ``lineage.trainingJob`` keeps the reference.
    """
    meta = tj["metadata"]
    summary, metadata = trained.result, trained.metadata
    mv_spec: dict[str, Any] = {
        "modelName": spec.model_name,
        "version": version,
        "task": spec.task,
        "artifact": {"uri": summary.artifact_uri, "sha256": summary.sha256},
        "metrics": summary.metrics or {},
        "lineage": {
            "dataset": spec.dataset_ref.name,
            "datasetVersion": trained.data_version,
            "trainingJob": meta["name"],
            "params": lineage_params(spec, metadata),
        },
    }
    if trained.image:
        mv_spec["lineage"]["image"] = trained.image
    if summary.profile_uri:
        mv_spec["profileUri"] = summary.profile_uri
    if summary.comparison is not None:
        mv_spec["comparison"] = summary.comparison.to_wire()
    if metadata:
        mv_spec["inputs"] = metadata.get("inputs", [])
        mv_spec["outputs"] = metadata.get("outputs", [])
    lbls = {
        MODEL_LABEL: spec.model_name,
        TRAINING_JOB_UID_LABEL: meta["uid"],
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": lbls},
        "spec": mv_spec,
    }


def lineage_params(spec: TrainingJobSpec, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters the model was trained with: the requested ones and, after a search,
    the winner's value of each searched parameter (from the model's own lineage)."""
    params = dict(spec.estimator.params or {})
    if spec.search is None or not metadata:
        return params
    fitted = (metadata.get("lineage") or {}).get("params") or {}
    params.update({k: fitted[k] for k in spec.search.space if k in fitted})
    return params


def served_by_label(md_name: str) -> str:
    """The label a ModelDeployment keeps on each ModelVersion it serves."""
    return f"{SERVED_BY_PREFIX}{md_name}"


def served_label_patches(
    md_name: str,
    previous: Sequence[str],
    desired: dict[str, str],
    labels: dict[str, dict[str, str]],
) -> dict[str, str | None]:
    """The ``served-by`` label value to set (or None: remove) per ModelVersion name.

    ``previous`` names the versions labelled last time (the deployment's status),
    ``desired`` maps each version served now to its role, and ``labels`` holds the
    current labels of the versions the operator has at hand; a version whose label
    already says its role needs no patch.
    """
    key = served_by_label(md_name)
    patches: dict[str, str | None] = {n: None for n in previous if n not in desired}
    for name, role in desired.items():
        if labels.get(name, {}).get(key) != role:
            patches[name] = role
    return patches


# ----------------------------------------------------------------------- serving


def serving_names(md_name: str) -> dict[str, str]:
    """Names of everything a ModelDeployment owns."""
    return {
        "stable": child_name(md_name, "stable"),
        "canary": child_name(md_name, "canary"),
        "service": md_name,
        "canary_service": child_name(md_name, "canary"),
        "shadow": child_name(md_name, "shadow"),
        "shadow_service": child_name(md_name, "shadow"),
        "routing": child_name(md_name, "routing"),
        # the stable pods' own identity: reads the routing ConfigMap, and nothing else
        "router": child_name(md_name, "router"),
        "network_policy": md_name,
        "token": child_name(md_name, "feedback-token"),
        "peers": child_name(md_name, "pods"),
    }


def build_feedback_token_secret(md: dict[str, Any], token: str) -> dict[str, Any]:
    """The Secret holding the bearer token the serving pods require for feedback and
    model control. ``token`` comes from the caller (random, created once: a re-create
    of an existing Secret is refused, so a reconcile never replaces it). Owned by the
    ModelDeployment, so it goes when the deployment does."""
    name = serving_names(md["metadata"]["name"])["token"]
    selector = {DEPLOYMENT_LABEL: md["metadata"]["name"]}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(md, name, labels("serving", **selector)),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def _token_volume(md: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The token Secret as a read-only file, and the setting that points the server at it."""
    secret = serving_names(md["metadata"]["name"])["token"]
    volume = {
        "name": "token",
        "secret": {
            "secretName": secret,
            "defaultMode": 0o440,
            "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
        },
    }
    mount = {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}
    env = {"name": "KUBELOOP_SERVING_TOKEN_FILE", "value": f"{TOKEN_DIR}/{TOKEN_KEY}"}
    return volume, mount, env


def _serving_selector(md: dict[str, Any], role: str) -> dict[str, str]:
    """The labels that pick the stable (or the canary) pods of one ModelDeployment."""
    return {DEPLOYMENT_LABEL: md["metadata"]["name"], ROLE_LABEL: role}


def _serving_env(spec: ModelDeploymentSpec, version: str) -> list[dict[str, Any]]:
    """The server's settings: the version it serves and the deployment's monitoring."""
    env: list[dict[str, Any]] = [{"name": "KUBELOOP_SERVING_MODEL_VERSION", "value": version}]
    feedback = spec.monitoring.feedback if spec.monitoring else None
    if feedback is not None:
        env += [
            {"name": "KUBELOOP_SERVING_FEEDBACK_METRIC", "value": feedback.metric},
            {"name": "KUBELOOP_SERVING_FEEDBACK_FLOOR", "value": str(feedback.floor)},
            {"name": "KUBELOOP_SERVING_FEEDBACK_WINDOW", "value": str(feedback.window)},
        ]
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
    return env


def _mount_routing(
    config_map: str,
    env: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> None:
    """Mount the routing ConfigMap into a stable pod and point the server at its file."""
    volumes.append({"name": "routing", "configMap": {"name": config_map, "optional": True}})
    mounts.append({"name": "routing", "mountPath": ROUTING_DIR, "readOnly": True})
    env.append({"name": "KUBELOOP_SERVING_ROUTING_FILE", "value": f"{ROUTING_DIR}/{ROUTING_FILE}"})


def _follow_routing(
    md: dict[str, Any], env: list[dict[str, Any]], pod: dict[str, Any], settings: OperatorSettings
) -> None:
    """Let a stable pod follow its routing ConfigMap through the API (a weight change
    arrives in about a second, not at the kubelet's next sync of the mounted file): its
    own ServiceAccount (:func:`build_routing_access`), whose token may only read that one
    ConfigMap, mounted into this pod alone."""
    if not settings.follow_routing:
        return
    names = serving_names(md["metadata"]["name"])
    env.append({"name": "KUBELOOP_SERVING_ROUTING_CONFIGMAP", "value": names["routing"]})
    pod["serviceAccountName"] = names["router"]
    pod["automountServiceAccountToken"] = True


def build_routing_access(md: dict[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    """The stable pods' ServiceAccount, a Role allowing get/list/watch on the routing
    ConfigMap alone (``resourceNames``), and the RoleBinding between them; owned by the
    ModelDeployment, so they go when it does."""
    name = md["metadata"]["name"]
    names = serving_names(name)
    lbls = labels("serving", **{DEPLOYMENT_LABEL: name})
    meta = _meta(md, names["router"], lbls)
    if settings.router_account_annotations:
        meta["annotations"] = dict(settings.router_account_annotations)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        # mounted only where the pod asks for it (the stable pods)
        "automountServiceAccountToken": False,
    }
    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [names["routing"]],
        "verbs": ["get", "list", "watch"],
    }
    rbac = "rbac.authorization.k8s.io"
    return [
        account,
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _meta(md, names["router"], lbls),
            "rules": [rule],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(md, names["router"], lbls),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": names["router"]},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": names["router"],
                    "namespace": md["metadata"]["namespace"],
                }
            ],
        },
    ]


def _buckets_env(mv: dict[str, Any], stable_mv: dict[str, Any]) -> list[dict[str, Any]]:
    """For a regression canary: read the prediction-value buckets from the stable
    model's directory (its profile.json), the one its stable pods serve."""
    if mv["spec"].get("task") != "regression":
        return []
    stable_dir = ArtifactLayout.model_dir(stable_mv["spec"]["artifact"]["uri"])
    return [{"name": "KUBELOOP_SERVING_PREDICTION_BUCKETS_FROM", "value": stable_dir}]


def _server_container(
    spec: ModelDeploymentSpec,
    mv_spec: dict[str, Any],
    settings: OperatorSettings,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """``kubeloop serve`` of one model directory, with its health probes."""
    port = settings.serving_port
    model = ArtifactLayout.model_dir(mv_spec["artifact"]["uri"])
    host = "0.0.0.0"
    return {
        "name": SERVER_CONTAINER,
        "image": spec.image or settings.serving_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            *("serve", "--model", model, "--name", spec.model_name),
            *("--host", host, "--port", str(port)),
            *(("--grpc-port", str(spec.grpc.port)) if spec.grpc else ()),
        ],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": port},
            *_grpc_ports(spec.grpc, "containerPort"),
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": spec.resources.to_wire() if spec.resources else settings.serving_resources,
        "volumeMounts": mounts,
    }


def _grpc_ports(grpc: ServingGRPC | None, key: str) -> list[dict[str, Any]]:
    """The port named ``grpc`` (``key``: containerPort, or port for a Service), when the
    spec turns gRPC on."""
    if grpc is None:
        return []
    port: dict[str, Any] = {"name": "grpc", key: grpc.port}
    if key == "port":
        port |= {"targetPort": "grpc", "appProtocol": "grpc"}
    return [port]


def _grpc(md: dict[str, Any]) -> ServingGRPC | None:
    """The ModelDeployment's ``spec.grpc`` (None: REST only)."""
    grpc = (md.get("spec") or {}).get("grpc")
    return None if grpc is None else ServingGRPC.model_validate(grpc)


def _scheme(md: dict[str, Any]) -> str:
    """``https`` when the ModelDeployment's spec asks for TLS, else ``http``: the scheme of
    its URLs and the name of its serving port (so a scrape job can tell them apart)."""
    return "https" if (md.get("spec") or {}).get("tls") else "http"


def _serve_tls(
    tls: ServingTLS,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    annotations: dict[str, str],
) -> None:
    """Mount the Secret, point the server at it, and speak HTTPS on the port and probes."""
    volumes.append(
        {
            "name": "tls",
            "secret": {"secretName": tls.secret_name, "defaultMode": TLS_FILE_MODE},
        }
    )
    container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    container["env"] += [
        {"name": "KUBELOOP_SERVING_TLS_CERT_FILE", "value": f"{TLS_DIR}/tls.crt"},
        {"name": "KUBELOOP_SERVING_TLS_KEY_FILE", "value": f"{TLS_DIR}/tls.key"},
        # absent when the Secret has no ca.crt: the server then trusts its own tls.crt
        {"name": "KUBELOOP_SERVING_TLS_CA_FILE", "value": f"{TLS_DIR}/ca.crt"},
    ]
    for port in container["ports"]:
        port["name"] = "https"
    for probe in ("readinessProbe", "livenessProbe"):
        container[probe]["httpGet"].update(port="https", scheme="HTTPS")
    annotations["prometheus.io/scheme"] = "https"


def _prediction_log(
    plog: PredictionLog,
    env: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> None:
    """Point the server's prediction log at standard output or at a file of its own on the
    claim: ``<path>/<pod name>.jsonl`` (the name from the downward API, so replicas never
    share a file), rotated by the server at ``maxFileBytes`` keeping ``keepFiles``. For an
    object store the file is on an emptyDir and each rotated one is shipped to ``uri``."""
    target = "-"
    if plog.pvc is not None or plog.uri is not None:
        if plog.pvc is not None:
            claim = {"claimName": plog.pvc.claim_name}
            volumes.append({"name": "prediction-log", "persistentVolumeClaim": claim})
        else:  # room for the files waiting to be shipped
            limit = f"{(plog.keep_files + 1) * plog.max_file_bytes}"
            volumes.append({"name": "prediction-log", "emptyDir": {"sizeLimit": limit}})
        mount = {"name": "prediction-log", "mountPath": PREDICTION_LOG_DIR}
        if plog.pvc is not None and plog.pvc.path:
            mount["subPath"] = plog.pvc.path
        mounts.append(mount)
        # defined before the variable that refers to it: Kubernetes expands $(NAME) in order
        env.append(
            {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
        target = f"{PREDICTION_LOG_DIR}/$({POD_NAME_ENV}).jsonl"
        env += [
            {
                "name": "KUBELOOP_SERVING_PREDICTION_LOG_MAX_BYTES",
                "value": str(plog.max_file_bytes),
            },
            {"name": "KUBELOOP_SERVING_PREDICTION_LOG_KEEP", "value": str(plog.keep_files)},
        ]
        if plog.uri is not None:
            env += [
                {"name": "KUBELOOP_SERVING_PREDICTION_LOG_UPLOAD", "value": plog.uri},
                {"name": "KUBELOOP_SERVING_POD_NAME", "value": f"$({POD_NAME_ENV})"},
            ]
    env += [
        {"name": "KUBELOOP_SERVING_PREDICTION_LOG", "value": target},
        {"name": "KUBELOOP_SERVING_PREDICTION_LOG_SAMPLE_RATE", "value": str(plog.sample_rate)},
        {
            "name": "KUBELOOP_SERVING_PREDICTION_LOG_INPUTS",
            "value": "1.0" if plog.include_inputs else "0.0",
        },
    ]


def build_serving_deployment(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    mv: dict[str, Any],
    role: str,
    replicas: int | None,
    settings: OperatorSettings,
    stable_mv: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stable or canary Deployment serving one ModelVersion.

    ``replicas`` None leaves the count to an autoscaler. The stable pods mount
    the routing ConfigMap that tells them the canary's share of requests. Canary
    pods of a regression model bucket their predicted values with ``stable_mv``'s
    edges (:func:`_buckets_env`), so canary and stable histograms compare.
    """
    names = serving_names(md["metadata"]["name"])
    version = str(mv["spec"]["version"])
    selector = _serving_selector(md, role)
    lbls = labels("serving", **selector, **{"app.kubernetes.io/version": version})
    env = _serving_env(spec, version)
    volumes, mounts = _volumes(settings, spec_annotation=False)
    token_volume, token_mount, token_env = _token_volume(md)
    volumes.append(token_volume)
    mounts.append(token_mount)
    env.append(token_env)
    # the registered digest: the pod serves only the bytes the ModelVersion recorded
    env.append(
        {"name": "KUBELOOP_SERVING_EXPECTED_SHA256", "value": mv["spec"]["artifact"]["sha256"]}
    )
    env += [*secret_env(settings.artifacts_secret), *_peers_env(md, settings)]  # store; peers
    if role == "canary" and stable_mv is not None:
        env += _buckets_env(mv, stable_mv)
    if role == "stable":
        _mount_routing(names["routing"], env, volumes, mounts)
    if spec.prediction_log is not None:
        _prediction_log(spec.prediction_log, env, volumes, mounts)
    container = _server_container(spec, mv["spec"], settings, env, mounts)
    scrape = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(settings.serving_port),
        "prometheus.io/path": "/metrics",
    }
    if spec.tls is not None:
        _serve_tls(spec.tls, container, volumes, scrape)
    pod = _pod_spec(container, volumes, settings)
    if role == "stable":
        _follow_routing(md, container["env"], pod, settings)
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": lbls, "annotations": scrape}, "spec": pod},
    }
    if replicas is not None:
        dep_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, names[role], lbls),
        "spec": dep_spec,
    }


def _service_name(md: dict[str, Any], role: str) -> str:
    names = serving_names(md["metadata"]["name"])
    if role == "shadow":
        return names["shadow_service"]
    return names["service"] if role == "stable" else names["canary_service"]


def build_service(md: dict[str, Any], role: str, settings: OperatorSettings) -> dict[str, Any]:
    """The Service in front of the stable (``role="stable"``) or canary pods."""
    selector = _serving_selector(md, role)
    scheme = _scheme(md)
    port = {"name": scheme, "port": settings.serving_port, "targetPort": scheme}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, _service_name(md, role), labels("serving", **selector)),
        "spec": {
            "selector": selector,
            "ports": [{**port, "appProtocol": scheme}, *_grpc_ports(_grpc(md), "port")],
        },
    }


def _peers_selector(md: dict[str, Any]) -> dict[str, str]:
    """Every serving pod of the deployment, whatever its role."""
    return {"app.kubernetes.io/name": "kubeloop-serving", DEPLOYMENT_LABEL: md["metadata"]["name"]}


def build_peers_service(md: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """A headless Service over all the deployment's serving pods: its name resolves to
    each pod's address, so a pod given a label for a request another pod answered can
    offer it to them (kubeloop.serving.peers). Ready pods only."""
    scheme = _scheme(md)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            md,
            serving_names(md["metadata"]["name"])["peers"],
            labels("serving", **_peers_selector(md)),
        ),
        "spec": {
            "clusterIP": "None",
            "selector": _peers_selector(md),
            "ports": [{"name": scheme, "port": settings.serving_port, "targetPort": scheme}],
        },
    }


def _peers_env(md: dict[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    """Where a pod offers feedback it cannot match: the peers Service, its own address
    left out. Plain HTTP only: a TLS deployment's certificate names its Services, not
    the pod addresses a forward dials."""
    if _scheme(md) != "http":
        return []
    name = serving_names(md["metadata"]["name"])["peers"]
    peers = f"{name}.{md['metadata']['namespace']}.svc:{settings.serving_port}"
    return [
        {"name": "KUBELOOP_SERVING_FEEDBACK_PEERS", "value": peers},
        {
            "name": "KUBELOOP_SERVING_POD_IP",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        },
    ]


def service_url(md: dict[str, Any], settings: OperatorSettings, role: str = "stable") -> str:
    """In-cluster URL of a Service built by :func:`build_service`."""
    name = _service_name(md, role)
    host = f"{name}.{md['metadata']['namespace']}.svc"
    return f"{_scheme(md)}://{host}:{settings.serving_port}"


def build_routing_config(
    md: dict[str, Any],
    weight: int,
    canary_version: int | None,
    settings: OperatorSettings,
    shadow: tuple[int, float] | None = None,
    sticky_header: str | None = None,
) -> dict[str, Any]:
    """The ConfigMap the stable pods watch for the canary's share of requests, and the
    shadow's (``shadow``: its version and percent) mirrored beside it; ``sticky_header``
    (spec.canary.stickyBy.header) keeps a caller on one side."""
    names = serving_names(md["metadata"]["name"])
    routing = RoutingConfig(
        url=service_url(md, settings, "canary") if canary_version else None,
        weight=weight if canary_version else 0,
        canary_version=canary_version,
        shadow_url=service_url(md, settings, "shadow") if shadow else None,
        shadow_weight=shadow[1] if shadow else 0,
        shadow_version=shadow[0] if shadow else None,
        sticky_header=sticky_header,
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(md, names["routing"], labels("serving")),
        "data": {ROUTING_FILE: routing.to_file()},
    }


def _sticky(spec: ModelDeploymentSpec) -> str | None:
    sticky = spec.canary.sticky_by if spec.canary is not None else None
    return sticky.header if sticky is not None else None


def build_hpa(md: dict[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """A HorizontalPodAutoscaler for the stable pods, when autoscaling is asked for."""
    if spec.autoscaling is None:
        return None
    names = serving_names(md["metadata"]["name"])
    scaling = spec.autoscaling
    cpu = {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization},
    }
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
            "metrics": [{"type": "Resource", "resource": cpu}],
        },
    }


def build_network_policy(
    md: dict[str, Any], spec: ModelDeploymentSpec, settings: OperatorSettings
) -> dict[str, Any] | None:
    """A NetworkPolicy letting only ``spec.networkPolicy.ingressFrom`` and the deployment's
    own pods (stable pods forward to the canary) reach the serving port, when asked for."""
    if spec.network_policy is None:
        return None
    name = md["metadata"]["name"]
    own = {"matchLabels": {DEPLOYMENT_LABEL: name}}
    peers = [{"podSelector": own}, *(p.to_wire() for p in spec.network_policy.ingress_from)]
    ports = [settings.serving_port, *(p["port"] for p in _grpc_ports(spec.grpc, "port"))]
    rule = {"from": peers, "ports": [{"protocol": "TCP", "port": p} for p in ports]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(
            md, serving_names(name)["network_policy"], labels("serving", **{DEPLOYMENT_LABEL: name})
        ),
        "spec": {"podSelector": own, "policyTypes": ["Ingress"], "ingress": [rule]},
    }


HTTP_ROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")


def routed_by_gateway(spec: ModelDeploymentSpec) -> bool:
    return spec.canary is not None and spec.canary.router == "gateway"


def build_http_route(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    weight: int,
    canary: bool,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """``canary.router: gateway``: the Gateway API HTTPRoute ``<name>`` splitting requests
    between the stable and (while one runs) the canary Service by weight, instead of the
    stable pods forwarding (Flagger's Gateway API router)."""
    assert spec.canary is not None
    assert spec.canary.gateway is not None
    gateway = spec.canary.gateway
    port = settings.serving_port
    backends = [{"name": _service_name(md, "stable"), "port": port, "weight": 100 - weight}]
    if canary:
        backends.append({"name": _service_name(md, "canary"), "port": port, "weight": weight})
    route_spec: dict[str, Any] = {
        "parentRefs": [ref.to_wire() for ref in gateway.parent_refs],
        "rules": [{"backendRefs": backends}],
    }
    if gateway.hostnames:
        route_spec["hostnames"] = list(gateway.hostnames)
    name = md["metadata"]["name"]
    return {
        "apiVersion": HTTP_ROUTE[0],
        "kind": HTTP_ROUTE[1],
        "metadata": _meta(md, name, labels("serving", **{DEPLOYMENT_LABEL: name})),
        "spec": route_spec,
    }


@dataclass(frozen=True)
class Absent:
    """A child that must not exist: deleted when it does."""

    api_version: str
    kind: str
    namespace: str
    name: str


def _shadow_children(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    shadow_mv: dict[str, Any] | None,
    settings: OperatorSettings,
) -> list[dict[str, Any] | Absent]:
    """The shadow Deployment and Service (its share of the replicas, at least one), or
    their absence."""
    names = serving_names(md["metadata"]["name"])
    if shadow_mv is None or spec.shadow is None:
        namespace = md["metadata"]["namespace"]
        return [
            Absent("apps/v1", "Deployment", namespace, names["shadow"]),
            Absent("v1", "Service", namespace, names["shadow_service"]),
        ]
    replicas = max(1, math.ceil(spec.replicas * spec.shadow.percent / 100))
    return [
        build_serving_deployment(md, spec, shadow_mv, "shadow", replicas, settings),
        build_service(md, "shadow", settings),
    ]


def serving_children(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    stable_mv: dict[str, Any],
    canary_mv: dict[str, Any] | None,
    weight: int,
    settings: OperatorSettings,
    shadow_mv: dict[str, Any] | None = None,
) -> list[dict[str, Any] | Absent]:
    """Everything a ModelDeployment should own now, in the order to apply (or delete) it.

    ``weight`` is the canary's share of requests; the canary gets that share of
    the replicas (at least one) and exists only while ``canary_mv`` is set. The shadow
    (``<name>-shadow``, serving ``shadow_mv``) exists only while spec.shadow names it.
    """
    names = serving_names(md["metadata"]["name"])
    namespace = md["metadata"]["namespace"]
    stable_replicas = None if spec.autoscaling is not None else spec.replicas
    canary_version = int(canary_mv["spec"]["version"]) if canary_mv is not None else None
    hpa = build_hpa(md, spec)
    policy = build_network_policy(md, spec, settings)
    mirror = None
    if shadow_mv is not None and spec.shadow is not None:
        mirror = (int(shadow_mv["spec"]["version"]), spec.shadow.percent)
    # with a Gateway router the HTTPRoute splits; the stable pods forward nothing
    gateway = routed_by_gateway(spec)
    pod_weight = 0 if gateway else weight
    children: list[dict[str, Any] | Absent] = [
        # the stable pods' identity first: their pods need the ServiceAccount to start
        *(build_routing_access(md, settings) if settings.follow_routing else ()),
        build_serving_deployment(md, spec, stable_mv, "stable", stable_replicas, settings),
        build_service(md, "stable", settings),
        build_peers_service(md, settings),
        build_routing_config(md, pod_weight, canary_version, settings, mirror, _sticky(spec)),
        hpa or Absent("autoscaling/v2", "HorizontalPodAutoscaler", namespace, names["stable"]),
        policy
        or Absent("networking.k8s.io/v1", "NetworkPolicy", namespace, names["network_policy"]),
    ]
    shadow = _shadow_children(md, spec, shadow_mv if mirror else None, settings)
    if gateway:  # after the Services it routes to
        shadow.append(build_http_route(md, spec, weight, canary_mv is not None, settings))
    if canary_mv is None:
        return [
            *children,
            Absent("apps/v1", "Deployment", namespace, names["canary"]),
            Absent("v1", "Service", namespace, names["canary_service"]),
            *shadow,
        ]
    canary_replicas = max(1, math.ceil(spec.replicas * weight / 100))
    return [
        *children,
        build_serving_deployment(
            md, spec, canary_mv, "canary", canary_replicas, settings, stable_mv=stable_mv
        ),
        build_service(md, "canary", settings),
        *shadow,
    ]
