"""Dataset: run a snapshot Job per refresh round and publish the data version."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import kopf

from kubeloop.api.base import API_VERSION, GROUP, VERSION, duration_seconds
from kubeloop.api.v1alpha1 import DatasetSpec, PredictionLogPVC
from kubeloop.contracts.results import JobResult
from kubeloop.operator import builders, metrics
from kubeloop.operator.feedbacksource import log_claim
from kubeloop.operator.freshdata import (
    REQUEST_ANNOTATION,
    pending_request,
    request_suffix,
    snapshot_outcome,
)
from kubeloop.operator.handlers import retention
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    Reconcile,
    parse_spec,
    run_reconcile,
)
from kubeloop.operator.handlers.jobs import Finished, blocked, job_state, outcome
from kubeloop.operator.timestamps import now, parse

KIND = "Dataset"


def refresh_round(spec: DatasetSpec, now_s: float) -> int:
    """The refresh window the current time falls in (0 when there is no refresh).

    Deterministic, so the Job name of a round is the same on every retry and
    after a restart; the next round starts a new Job.
    """
    if spec.refresh_interval is None:
        return 0
    return int(now_s // duration_seconds(spec.refresh_interval))


def _record_success(rec: Reconcile, summary: JobResult) -> None:
    digest = str(summary.digest)
    columns = summary.columns or []
    if rec.status.get("version") != digest:
        rec.info(reason="NewVersion", message=f"data version {digest}")
        rec.status["lastSnapshotTime"] = now()
        history = [h for h in rec.status.get("history") or [] if h.get("version") != digest]
        entry = {"version": digest, "rows": summary.rows or 0, "time": now()}
        if summary.snapshot_uri:
            entry["snapshotUri"] = summary.snapshot_uri
        rec.status["history"] = [entry, *history]  # trimmed by retention.trim_history
    rec.status.update(
        version=digest,
        rows=summary.rows,
        columns=len(columns),
        inferredSchema=[c.to_wire() for c in columns],
        snapshotUri=summary.snapshot_uri,
        profileUri=summary.profile_uri,
    )
    rec.ready(True, "SnapshotSucceeded", f"{summary.rows} rows, {digest}")


def _harvest(rec: Reconcile, name: str, done: Finished) -> None:
    """Record what the finished snapshot Job ``name`` found, once, and in ``lastSnapshot``
    which request it served and whether the digest changed."""
    rec.status["observedSnapshotJob"] = name
    summary = done.result
    request = parse(rec.status.get("snapshotRequest"))
    previous = rec.status.get("version")
    if done.state == "Succeeded" and summary and summary.digest:
        digest = str(summary.digest)
        rec.status["lastSnapshot"] = snapshot_outcome(request, previous, digest, "", now())
        _record_success(rec, summary)
        return
    rec.status["lastSnapshot"] = snapshot_outcome(request, previous, None, done.reason, now())
    rec.warn(reason="SnapshotFailed", message=done.reason)
    # A failed refresh keeps the last good version current.
    rec.ready(bool(rec.status.get("version")), "SnapshotFailed", done.reason)


def _waiting(rec: Reconcile, job_name: str, cannot_start: str | None = None) -> None:
    """Until the first version exists, Ready says which Job it waits for; and whenever the
    kubelet cannot start that Job's pod (a SQL source's Secret missing), why — a current
    version stays current (Ready stays True) meanwhile."""
    if cannot_start:
        message = f"Job {job_name} cannot start its pod: {cannot_start}"
        rec.ready(bool(rec.status.get("version")), "SnapshotBlocked", message)
    elif not rec.status.get("version"):
        rec.ready(False, "Snapshotting", f"waiting for Job {job_name}")


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Finish with the latest snapshot Job, then start the one the current round wants.

    One snapshot runs at a time: a new refresh round (or a new generation) waits
    for the running Job, and every finished Job's result is recorded before the
    next one starts.
    """
    spec = parse_spec(DatasetSpec, rec)
    latest: str | None = rec.status.get("snapshotJob")
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, latest) if latest else None
    if latest and job is not None:
        if job_state(job) == "Running":
            _waiting(rec, latest, blocked(ctx.kube, job, builders.TRAINER_CONTAINER))
            return
        if rec.status.get("observedSnapshotJob") != latest:
            _harvest(rec, latest, outcome(ctx.kube, job))
            retention.trim_history(ctx, rec, spec)
    claim = _log_claim(ctx, rec, spec)
    if claim is False:
        return  # the feedback source cannot be read (yet): Ready says why
    annotations = dict(rec.body.get("metadata", {}).get("annotations") or {})
    pending = pending_request(annotations, rec.status)
    if pending is not None:
        _start(ctx, rec, spec, request_suffix(pending), pending, claim)
        return
    round_ = refresh_round(spec, time.time())
    wanted = builders.snapshot_job_name(rec.body, round_)
    if wanted in (latest, rec.status.get("refreshSnapshotJob")):
        return  # this round's snapshot is done (its Job may since have been cleaned up)
    _start(ctx, rec, spec, round_, parse(annotations.get(REQUEST_ANNOTATION)), claim)
    rec.status["refreshSnapshotJob"] = wanted


def _log_claim(
    ctx: Context, rec: Reconcile, spec: DatasetSpec
) -> PredictionLogPVC | Literal[False] | None:
    """A feedback source's prediction-log claim (None for another source); False, with
    ``Ready=False`` naming the deployment's field, when it cannot be read. Checked on
    every pass: the deployment may be fixed, or changed, at any time."""
    fb = spec.source.feedback
    if fb is None:
        return None
    name = fb.deployment_ref.name
    found = log_claim(name, ctx.kube.get(API_VERSION, "ModelDeployment", rec.namespace, name))
    if isinstance(found, PredictionLogPVC):
        return found
    reason, message = found
    rec.ready(False, reason, message)
    return False


def _start(
    ctx: Context,
    rec: Reconcile,
    spec: DatasetSpec,
    round_: int | str,
    request: datetime | None,
    claim: PredictionLogPVC | None = None,
) -> None:
    """Create the snapshot Job named after ``round_`` (a refresh round or a request); it
    serves ``request``, the snapshot request outstanding now."""
    wanted = builders.snapshot_job_name(rec.body, round_)
    ctx.kube.create(builders.build_snapshot_job(rec.body, spec, round_, ctx.settings, claim))
    metrics.CHILDREN_CREATED.labels(kind="Job").inc()
    rec.info(reason="SnapshotStarted", message=f"Job {wanted}")
    rec.status["snapshotJob"] = wanted
    if request is not None:
        rec.status["snapshotRequest"] = request.isoformat().replace("+00:00", "Z")
    _waiting(rec, wanted)


@kopf.on.resume(GROUP, VERSION, "datasets")
@kopf.on.create(GROUP, VERSION, "datasets")
@kopf.on.update(GROUP, VERSION, "datasets", field="spec")
@kopf.on.update(GROUP, VERSION, "datasets", field="metadata.annotations")
@kopf.timer(GROUP, VERSION, "datasets", interval=IMPORT_SETTINGS.resync_seconds)
@kopf.timer(
    GROUP,
    VERSION,
    "datasets",
    id="refresh_tick",
    interval=IMPORT_SETTINGS.tick_seconds,
    when=lambda spec, status, **_: (
        bool(spec.get("refreshInterval"))
        or status.get("snapshotJob") != status.get("observedSnapshotJob")
    ),
)
def reconcile_dataset(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
