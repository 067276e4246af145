"""TrainingJob: one trainer Job, then the next ModelVersion of the model."""

from __future__ import annotations

from typing import Any

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION
from kubeloop.api.v1alpha1 import DatasetSpec, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import JobResult
from kubeloop.contracts.status import TRAINING_TERMINAL_PHASES
from kubeloop.operator import builders, metrics
from kubeloop.operator.conditions import is_true, now
from kubeloop.operator.handlers.common import (
    Context,
    Reconcile,
    job_failure,
    job_state,
    parse_spec,
    run_reconcile,
    termination_message,
    versions_of,
)
from kubeloop.operator.kube import ConflictError, Kube
from kubeloop.operator.names import model_version_name
from kubeloop.operator.settings import OperatorSettings
from kubeloop.operator.store import read_json

KIND = "TrainingJob"
_SETTINGS = OperatorSettings()
#: Versions tried past the highest existing one before giving up for this pass.
MAX_ALLOCATION_TRIES = 50


def snapshot_uri(dataset: dict[str, Any], version: str, settings: OperatorSettings) -> str | None:
    """Where the snapshot of ``version`` of ``dataset`` is, from its status."""
    status = dataset.get("status") or {}
    if status.get("version") == version and status.get("snapshotUri"):
        return str(status["snapshotUri"])
    for entry in status.get("history") or []:
        if entry.get("version") == version and entry.get("snapshotUri"):
            return str(entry["snapshotUri"])
    fmt = DatasetSpec.model_validate(dataset["spec"]).format
    meta = dataset["metadata"]
    out = builders.dataset_out_uri(settings, meta["namespace"], meta["name"])
    return ArtifactLayout.snapshot_data(out, version, fmt)


def allocate_model_version(
    kube: Kube, tj: dict[str, Any], spec: TrainingJobSpec, build: Any
) -> dict[str, Any]:
    """Create the ModelVersion of a succeeded TrainingJob, exactly once.

    The version number is taken by creating ``<model>-v<N>``: the API server
    refuses a second object of that name, so two TrainingJobs finishing together
    never share a number; the loser moves on to N+1. A ModelVersion already
    labelled with this TrainingJob's uid (a retry, a restart) is returned as is.
    """
    namespace = tj["metadata"]["namespace"]
    mine = kube.list(
        API_VERSION,
        "ModelVersion",
        namespace,
        {"kubeloop.io/training-job-uid": tj["metadata"]["uid"]},
    )
    if mine:
        return mine[0]
    existing = versions_of(kube, namespace, spec.model_name)
    version = max((int(mv["spec"]["version"]) for mv in existing), default=0) + 1
    for _ in range(MAX_ALLOCATION_TRIES):
        try:
            created = kube.create(
                build(version, model_version_name(spec.model_name, version)), exist_ok=False
            )
        except ConflictError:
            version += 1
            continue
        metrics.CHILDREN_CREATED.labels(kind="ModelVersion").inc()
        return created
    raise kopf.TemporaryError(f"no free version of {spec.model_name} found", delay=1)


def read_metadata(summary: JobResult) -> dict[str, Any] | None:
    """The trainer's model.json next to the artifact, when the operator can read it."""
    uri = summary.metadata_uri or ArtifactLayout.sibling(
        str(summary.artifact_uri), ArtifactLayout.METADATA
    )
    return read_json(uri)


def _resolve_data(ctx: Context, rec: Reconcile, spec: TrainingJobSpec) -> str | None:
    """The data version to train on, fixed once chosen; None while waiting."""
    dataset = ctx.kube.get(API_VERSION, "Dataset", rec.namespace, spec.dataset_ref.name)
    if dataset is None:
        rec.status.setdefault("phase", "Pending")
        rec.condition(
            "Ready", False, "DatasetNotFound", f"Dataset {spec.dataset_ref.name} not found"
        )
        return None
    version = rec.status.get("datasetVersion") or spec.dataset_ref.version
    if version is None:
        if not is_true(dataset.get("status")):
            rec.status["phase"] = "Pending"
            rec.condition(
                "Ready", False, "DatasetNotReady", f"Dataset {spec.dataset_ref.name} is not Ready"
            )
            return None
        version = dataset["status"]["version"]
    rec.status["datasetVersion"] = version
    return snapshot_uri(dataset, version, ctx.settings)


def reconcile(ctx: Context, rec: Reconcile) -> None:
    spec = parse_spec(TrainingJobSpec, rec)
    if rec.status.get("phase") in TRAINING_TERMINAL_PHASES:
        return
    job_name = builders.trainer_job_name(rec.body)
    job = ctx.kube.get("batch/v1", "Job", rec.namespace, job_name)
    if job is None:
        data_uri = _resolve_data(ctx, rec, spec)
        if data_uri is None:
            return
        ctx.kube.create(builders.build_trainer_job(rec.body, spec, data_uri, ctx.settings))
        metrics.CHILDREN_CREATED.labels(kind="Job").inc()
        rec.info(
            reason="TrainingStarted",
            message=f"Job {job_name} on {rec.status['datasetVersion']}",
        )
        rec.status.update(phase="Running", jobName=job_name, startTime=now())
        rec.condition("Ready", False, "Training", f"Job {job_name} is running")
        return
    rec.status.update(jobName=job_name)
    rec.status.setdefault("startTime", now())
    state = job_state(job)
    if state == "Running":
        rec.status["phase"] = "Running"
        rec.condition("Ready", False, "Training", f"Job {job_name} is running")
        return
    summary = JobResult.from_message(termination_message(ctx.kube, job, builders.TRAINER_CONTAINER))
    if summary is None:
        summary = JobResult(kind="train", status="failed")
    if summary.metrics:
        rec.status["metrics"] = summary.metrics
    rec.status.setdefault("completionTime", now())
    if summary.status == "rejected":
        reason = summary.reason or "quality gate not met"
        rec.status.update(phase="Rejected", reason=reason)
        rec.condition("Ready", False, "GateRejected", reason)
        rec.warn(reason="GateRejected", message=reason)
        return
    if state == "Failed" or not summary.artifact_uri or not summary.sha256:
        reason = summary.reason or job_failure(job)
        if state == "Succeeded":
            reason = "trainer reported no artifact in its termination message"
        rec.status.update(phase="Failed", reason=reason)
        rec.condition("Ready", False, "TrainingFailed", reason)
        rec.warn(reason="TrainingFailed", message=reason)
        return
    data_version = str(rec.status.get("datasetVersion") or "")
    metadata = read_metadata(summary)

    def build(version: int, name: str) -> dict[str, Any]:
        return builders.build_model_version(
            rec.body, spec, version, name, summary, data_version, metadata
        )

    mv = allocate_model_version(ctx.kube, rec.body, spec, build)
    version = int(mv["spec"]["version"])
    rec.status.update(phase="Succeeded", modelVersion=mv["metadata"]["name"], version=version)
    rec.condition("Ready", True, "Succeeded", f"published {mv['metadata']['name']}")
    rec.info(
        reason="ModelVersionCreated",
        message=f"{mv['metadata']['name']} (version {version})",
    )


@kopf.on.resume(GROUP, VERSION, "trainingjobs")
@kopf.on.create(GROUP, VERSION, "trainingjobs")
@kopf.on.update(GROUP, VERSION, "trainingjobs", field="spec")
@kopf.timer(
    GROUP,
    VERSION,
    "trainingjobs",
    interval=_SETTINGS.resync_seconds,
    initial_delay=1,
    when=lambda status, **_: status.get("phase") not in TRAINING_TERMINAL_PHASES,
)
def reconcile_trainingjob(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
