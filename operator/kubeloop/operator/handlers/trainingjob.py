"""TrainingJob: one trainer Job, then the next ModelVersion of the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION
from kubeloop.api.v1alpha1 import DatasetSpec, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import JobResult
from kubeloop.contracts.status import TRAINING_TERMINAL_PHASES
from kubeloop.operator import builders, champion, metrics
from kubeloop.operator.champion import Resolution
from kubeloop.operator.freshdata import (
    REQUEST_ANNOTATION,
    Fail,
    Wait,
    dataset_version_for,
    merged_request,
)
from kubeloop.operator.handlers import search
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    InvalidSpecError,
    Reconcile,
    parse_spec,
    run_reconcile,
    versions_of,
)
from kubeloop.operator.handlers.jobs import Finished, job_state, outcome
from kubeloop.operator.kube import ConflictError, Kube
from kubeloop.operator.names import model_version_name
from kubeloop.operator.settings import OperatorSettings
from kubeloop.operator.store import read_json
from kubeloop.operator.timestamps import now, parse, rfc3339

KIND = "TrainingJob"
#: Why a Job that completed without publishing anything failed.
NO_ARTIFACT = "trainer reported no artifact in its termination message"
#: Versions tried past the highest existing one before giving up for this pass.
MAX_ALLOCATION_TRIES = 50


def snapshot_uri(dataset: dict[str, Any], version: str, settings: OperatorSettings) -> str:
    """Where the snapshot of ``version`` of ``dataset`` is, from its status."""
    status = dataset.get("status") or {}
    if status.get("version") == version and status.get("snapshotUri"):
        return str(status["snapshotUri"])
    for entry in status.get("history") or []:
        if entry.get("version") == version and entry.get("snapshotUri"):
            return str(entry["snapshotUri"])
    fmt = DatasetSpec.model_validate(dataset["spec"]).snapshot_format
    meta = dataset["metadata"]
    out = builders.dataset_out_uri(settings, meta["namespace"], meta["name"])
    return ArtifactLayout.snapshot_data(out, version, fmt)


def allocate_model_version(
    kube: Kube,
    tj: dict[str, Any],
    spec: TrainingJobSpec,
    build: Callable[[int, str], dict[str, Any]],
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
        {builders.TRAINING_JOB_UID_LABEL: tj["metadata"]["uid"]},
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


def _request_snapshot(ctx: Context, dataset: dict[str, Any], wanted: datetime) -> None:
    """Ask the Dataset for a snapshot at least as new as ``wanted`` (requests only move on)."""
    meta = dataset["metadata"]
    current = (meta.get("annotations") or {}).get(REQUEST_ANNOTATION)
    value = merged_request(current, wanted)
    if value is None:
        return
    stamp = rfc3339(value)
    annotations = {REQUEST_ANNOTATION: stamp}
    ctx.kube.patch_metadata(
        API_VERSION, "Dataset", meta["namespace"], meta["name"], {"annotations": annotations}
    )


def _resolve_data(ctx: Context, rec: Reconcile, spec: TrainingJobSpec) -> str | None:
    """The data version to train on, fixed once chosen; None while waiting (or failed)."""
    ref = spec.dataset_ref
    dataset = ctx.dataset(rec.namespace, ref.name)
    if dataset is None:
        rec.status.setdefault("phase", "Pending")
        rec.ready(False, "DatasetNotFound", f"Dataset {ref.name} not found")
        return None
    created = parse(rec.body["metadata"].get("creationTimestamp")) or datetime.now(UTC)
    decision = dataset_version_for(
        ref,
        rec.status.get("datasetVersion"),
        created,
        dict(dataset.get("status") or {}),
        datetime.now(UTC),
    )
    if isinstance(decision, Fail):
        _end(rec, "Failed", decision.reason, decision.message)
        return None
    if isinstance(decision, Wait):
        rec.status["phase"] = "Pending"
        rec.ready(False, decision.reason, decision.message)
        if decision.request is not None:
            rec.status["snapshotRequested"] = rfc3339(decision.request)
            _request_snapshot(ctx, dataset, decision.request)
        return None
    if decision.message and not rec.status.get("datasetVersion"):
        rec.info(reason="FreshSnapshot", message=decision.message)
    rec.status["datasetVersion"] = decision.version
    return snapshot_uri(dataset, decision.version, ctx.settings)


def _resolve_champion(ctx: Context, rec: Reconcile, spec: TrainingJobSpec) -> Resolution | None:
    """The model the challenger must beat (see :mod:`kubeloop.operator.champion`); None while
    waiting for it; InvalidSpec when the spec cannot name one."""
    compare = spec.gate.compare_to if spec.gate else None
    if compare is None or compare.policy == "None":
        return Resolution("none")
    md_name = champion.deployment_name(rec.body)
    md = None
    if compare.policy == "Serving" and md_name is not None:
        md = ctx.kube.get(API_VERSION, "ModelDeployment", rec.namespace, md_name)
    versions = ctx.model_versions(rec.namespace)
    found = champion.resolve(rec.body, spec, md, versions)
    if found.outcome == "invalid":
        rec.ready(False, "InvalidSpec", found.message)
        raise InvalidSpecError(found.message)
    if found.outcome == "waiting":
        rec.status.setdefault("phase", "Pending")
        rec.ready(False, "ChampionNotFound", found.message)
        return None
    return found


def _start(
    ctx: Context, rec: Reconcile, spec: TrainingJobSpec, job_name: str, extra: Sequence[str] = ()
) -> None:
    """Create the trainer Job once the champion and the data version are known (``extra``:
    more ``kubeloop train`` arguments, e.g. a finished search's ``--trials``)."""
    found = _resolve_champion(ctx, rec, spec)
    if found is None:
        return
    data_uri = _resolve_data(ctx, rec, spec)
    if data_uri is None:
        return
    args = [*(found.champion.args() if found.champion else []), *extra]
    ctx.kube.create(builders.build_trainer_job(rec.body, spec, data_uri, ctx.settings, args))
    metrics.CHILDREN_CREATED.labels(kind="Job").inc()
    against = f"; {found.message}" if found.message else ""
    rec.info(
        reason="TrainingStarted",
        message=f"Job {job_name} on {rec.status['datasetVersion']}{against}",
    )
    rec.status["jobName"] = job_name
    rec.status.setdefault("startTime", now())
    _running(rec, job_name)


def _running(rec: Reconcile, job_name: str) -> None:
    """The trainer Job runs: nothing to do but say so."""
    rec.status["phase"] = "Running"
    rec.ready(False, "Training", f"Job {job_name} is running")


def _end(rec: Reconcile, phase: str, reason_code: str, reason: str) -> None:
    """A terminal phase without a ModelVersion: the reason in status, a Warning Event."""
    rec.status.update(phase=phase, reason=reason)
    rec.ready(False, reason_code, reason)
    rec.warn(reason=reason_code, message=reason)


def rejection_reason(summary: JobResult) -> str:
    """The Ready reason of a rejected run: the comparison's when it failed, else the gate's."""
    comparison = summary.comparison
    if comparison is not None and not comparison.passed:
        return "SchemaChanged" if comparison.reason == "SchemaChanged" else "ChallengerWorse"
    return "GateRejected"


def _publish(
    ctx: Context, rec: Reconcile, spec: TrainingJobSpec, summary: JobResult, image: str | None
) -> None:
    """Create the ModelVersion of the trained artifact and point the status at it."""
    trained = builders.Trained(
        result=summary,
        metadata=read_metadata(summary),
        data_version=str(rec.status.get("datasetVersion") or ""),
        image=image,
    )

    def build(version: int, name: str) -> dict[str, Any]:
        return builders.build_model_version(rec.body, spec, version, name, trained)

    mv = allocate_model_version(ctx.kube, rec.body, spec, build)
    name, version = mv["metadata"]["name"], int(mv["spec"]["version"])
    rec.status.update(phase="Succeeded", modelVersion=name, version=version)
    compared = f" ({summary.comparison.message})" if summary.comparison else ""
    rec.ready(True, "Succeeded", f"published {name}{compared}")
    rec.info(reason="ModelVersionCreated", message=f"{name} (version {version})")


def _finish(ctx: Context, rec: Reconcile, spec: TrainingJobSpec, done: Finished) -> None:
    """Record how the trainer Job ended: rejected, failed, or a new ModelVersion."""
    summary = done.result or JobResult(kind="train", status="failed")
    if summary.metrics:
        rec.status["metrics"] = summary.metrics
    if summary.comparison is not None:
        rec.status["comparison"] = summary.comparison.to_wire()
    rec.status.setdefault("completionTime", now())
    if summary.status == "rejected":
        _end(rec, "Rejected", rejection_reason(summary), summary.reason or "quality gate not met")
    elif done.state == "Failed" or not (summary.artifact_uri and summary.sha256):
        _end(
            rec,
            "Failed",
            "TrainingFailed",
            NO_ARTIFACT if done.state == "Succeeded" else done.reason,
        )
    else:
        _publish(ctx, rec, spec, summary, done.image)


def _start_or_search(ctx: Context, rec: Reconcile, spec: TrainingJobSpec, job_name: str) -> None:
    """Start the trainer Job, or first the search across pods when the spec asks for one
    (:mod:`kubeloop.operator.handlers.search`)."""
    if not search.parallel(spec):
        _start(ctx, rec, spec, job_name)
        return

    def data_uri() -> str | None:
        if _resolve_champion(ctx, rec, spec) is None:  # before the search: fail fast
            return None
        return _resolve_data(ctx, rec, spec)

    extra = search.step(ctx, rec, spec, data_uri, _end)
    if extra is not None:
        _start(ctx, rec, spec, job_name, extra)


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Start the trainer Job, follow it, and publish what it trained; nothing after the end."""
    spec = parse_spec(TrainingJobSpec, rec)
    if rec.status.get("phase") in TRAINING_TERMINAL_PHASES:
        return
    job_name = builders.trainer_job_name(rec.body)
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, job_name)
    if job is None:
        _start_or_search(ctx, rec, spec, job_name)
        return
    rec.status.update(jobName=job_name)
    rec.status.setdefault("startTime", now())
    if job_state(job) == "Running":
        _running(rec, job_name)
    else:
        _finish(ctx, rec, spec, outcome(ctx.kube, job))


@kopf.on.resume(GROUP, VERSION, "trainingjobs")
@kopf.on.create(GROUP, VERSION, "trainingjobs")
@kopf.on.update(GROUP, VERSION, "trainingjobs", field="spec")
@kopf.timer(
    GROUP,
    VERSION,
    "trainingjobs",
    interval=IMPORT_SETTINGS.resync_seconds,
    when=lambda status, **_: status.get("phase") not in TRAINING_TERMINAL_PHASES,
)
def reconcile_trainingjob(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
