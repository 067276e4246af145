"""BatchPrediction: a ``kubeloop predict`` Job once, or a CronJob on a schedule.

The decisions (which versions, which child, what a finished run means) are pure
(:mod:`kubeloop.operator.prediction`); this module reads the objects they need and
applies what they return. Ready says whether the predictions are there (one-off) or the
schedule is in place and its last run did not fail (scheduled); ``Succeeded`` tells how
the latest finished run ended.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubeloop.api.base import GROUP, VERSION
from kubeloop.api.v1alpha1 import BatchPredictionSpec
from kubeloop.operator import metrics, prediction
from kubeloop.operator.builders import TRAINER_CONTAINER
from kubeloop.operator.conditions import get_condition
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    Context,
    InvalidSpecError,
    Reconcile,
    parse_spec,
    run_reconcile,
)
from kubeloop.operator.handlers.jobs import Finished, blocked, job_state, outcome
from kubeloop.operator.handlers.trainingjob import snapshot_uri
from kubeloop.operator.prediction import NotYetError, Target
from kubeloop.operator.timestamps import now, parse

KIND = "BatchPrediction"
#: The condition that tells how the latest finished run ended.
SUCCEEDED = "Succeeded"
#: One-off phases after which nothing more happens for this spec.
TERMINAL_PHASES = ("Succeeded", "Failed")
#: Status fields of one run, cleared when a new one-off run starts.
RUN_FIELDS = (
    "observedJob",
    "rows",
    "durationSeconds",
    "outputUri",
    "outputSha256",
    "completionTime",
    "reason",
)


def _resolve(ctx: Context, rec: Reconcile, spec: BatchPredictionSpec) -> Target | None:
    """The versions a run scores now; None (and Ready saying why) while one is missing."""
    versions = ctx.model_versions(rec.namespace)
    dataset = ctx.dataset(rec.namespace, spec.dataset_ref.name)
    try:
        mv, number = prediction.resolve_model(spec.model_ref, versions)
        data = prediction.resolve_data(
            spec.dataset_ref, dataset, lambda ds, v: snapshot_uri(ds, v, ctx.settings)
        )
    except NotYetError as exc:
        rec.status["phase"] = "Pending"
        rec.ready(False, exc.waiting.reason, exc.waiting.message)
        return None
    return prediction.target(mv, number, data)


def _chosen(rec: Reconcile, chosen: Target) -> None:
    rec.status.update(
        modelVersion=chosen.model_version,
        version=chosen.version,
        datasetVersion=chosen.dataset_version,
    )


def _record(rec: Reconcile, job: dict[str, Any], done: Finished) -> bool:
    """Put a finished run's result in status (once per Job); True when it succeeded."""
    name = job["metadata"]["name"]
    result = prediction.run_outcome(job, done)
    if rec.status.get("observedJob") != name:
        if not result.succeeded:  # the fields describe the latest run, not an earlier one
            rec.status.update(rows=None, outputSha256=None, durationSeconds=None, outputUri=None)
        rec.status.update({k: v for k, v in result.fields.items() if v is not None})
        times = prediction.run_times(job)
        rec.status["startTime"] = times[0] or rec.status.get("startTime") or now()
        rec.status["completionTime"] = times[1] or now()
        if result.succeeded:
            rec.info(reason=result.reason, message=result.message)
        else:
            rec.warn(reason=result.reason, message=result.message)
    rec.condition(SUCCEEDED, result.succeeded, result.reason, result.message)
    return result.succeeded


def _running(ctx: Context, rec: Reconcile, job: dict[str, Any]) -> str | None:
    """A run is going: phase Running; returns why its pod cannot start, if the kubelet
    says it cannot."""
    name = job["metadata"]["name"]
    rec.status.update(phase="Running", jobName=name)
    cannot = blocked(ctx.kube, job, TRAINER_CONTAINER)
    return f"Job {name} cannot start its pod: {cannot}" if cannot else None


def _running_once(ctx: Context, rec: Reconcile, job: dict[str, Any]) -> None:
    """The one-off run is going: what it scores (from its Job, so also after a restart that
    lost the status write), and Ready saying so."""
    scored = prediction.scored_versions(job)
    rec.status.update({k: v for k, v in scored.items() if v is not None})
    cannot = _running(ctx, rec, job)
    if cannot:
        rec.ready(False, "PredictionBlocked", cannot)
    else:
        rec.ready(False, "Predicting", f"Job {job['metadata']['name']} is running")


def _start(ctx: Context, rec: Reconcile, spec: BatchPredictionSpec, name: str) -> None:
    """Create the one-off run's Job once its model and data versions are known."""
    if spec.suspend:
        rec.status["phase"] = "Suspended"
        rec.ready(False, "Suspended", "spec.suspend is true: no run starts")
        return
    chosen = _resolve(ctx, rec, spec)
    if chosen is None:
        return
    job = ctx.kube.create(prediction.build_prediction_job(rec.body, spec, chosen, ctx.settings))
    metrics.CHILDREN_CREATED.labels(kind="Job").inc()
    rec.status.update(dict.fromkeys(RUN_FIELDS))  # None: removed from the stored status
    rec.status.update(startTime=now())
    _chosen(rec, chosen)
    rec.condition(SUCCEEDED, None, "Predicting", f"Job {name} is running")
    rec.info(
        reason="PredictionStarted",
        message=f"Job {name}: {chosen.model_version} on {chosen.dataset_version}",
    )
    _running_once(ctx, rec, job)


def _once(ctx: Context, rec: Reconcile, spec: BatchPredictionSpec) -> None:
    """A one-off run: start its Job, follow it, record its result; nothing after that."""
    name = prediction.job_name(rec.body, spec)
    if rec.status.get("jobName") == name and rec.status.get("phase") in TERMINAL_PHASES:
        return
    _drop_cronjob(ctx, rec)
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, name)
    if job is None:
        _start(ctx, rec, spec, name)
        return
    if job_state(job) == "Running":
        _running_once(ctx, rec, job)
        return
    rec.status["jobName"] = name
    if _record(rec, job, outcome(ctx.kube, job)):
        rec.status["phase"] = "Succeeded"
        rec.ready(True, "PredictionSucceeded", _describe(rec.status))
    else:
        rec.status["phase"] = "Failed"
        rec.ready(False, "PredictionFailed", str(rec.status.get("reason") or ""))


def _describe(status: dict[str, Any]) -> str:
    return f"{status.get('rows')} rows scored with {status.get('modelVersion')} to " + str(
        status.get("outputUri")
    )


def _drop_cronjob(ctx: Context, rec: Reconcile) -> None:
    """A schedule removed from the spec: its CronJob goes (its finished Jobs with it)."""
    cronjob = rec.status.get("cronJobName")
    if cronjob:
        ctx.kube.delete("batch/v1", "CronJob", rec.namespace, cronjob)
        rec.status.update(cronJobName=None, lastScheduleTime=None)


def _latest_run(ctx: Context, rec: Reconcile, cronjob: dict[str, Any]) -> str | None:
    """Follow the CronJob's latest run (the Job its ``lastScheduleTime`` names) and record
    it once finished; returns why a running one's pod cannot start, if it cannot."""
    stamp = (cronjob.get("status") or {}).get("lastScheduleTime")
    scheduled = parse(stamp)
    if scheduled is None:
        return None
    rec.status["lastScheduleTime"] = stamp
    name = prediction.scheduled_job_name(cronjob["metadata"]["name"], scheduled)
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, name)
    if job is None:  # skipped, or already cleaned up by the history limit
        return None
    rec.status["jobName"] = name
    if job_state(job) == "Running":
        return _running(ctx, rec, job)
    _record(rec, job, outcome(ctx.kube, job))
    return None


def _scheduled(ctx: Context, rec: Reconcile, spec: BatchPredictionSpec) -> None:
    """A schedule: keep the CronJob on the versions chosen now, and report its runs."""
    chosen = _resolve(ctx, rec, spec)
    if chosen is None:
        return
    desired = prediction.build_prediction_cronjob(rec.body, spec, chosen, ctx.settings)
    cronjob = ctx.kube.apply(desired)
    name = desired["metadata"]["name"]
    rec.status["cronJobName"] = name
    _chosen(rec, chosen)
    rec.status["phase"] = "Suspended" if spec.suspend else "Scheduled"
    cannot = _latest_run(ctx, rec, cronjob)
    last = get_condition(rec.status, SUCCEEDED)
    if cannot:
        rec.ready(False, "PredictionBlocked", cannot)
    elif last is not None and last.get("status") == "False":
        rec.ready(False, "PredictionFailed", f"the latest run failed: {last.get('message')}")
    elif spec.suspend:
        rec.ready(False, "Suspended", f"spec.suspend is true: CronJob {name} starts no run")
    else:
        rec.ready(True, "Scheduled", f"CronJob {name} runs on {spec.schedule!r}")


def reconcile(ctx: Context, rec: Reconcile) -> None:
    """Run the prediction once or keep its schedule, and report the latest run."""
    spec = parse_spec(BatchPredictionSpec, rec)
    refused = prediction.output_refused(spec.output.uri, ctx.settings, rec.namespace)
    if refused:
        rec.ready(False, "InvalidSpec", refused)
        raise InvalidSpecError(refused)
    if spec.schedule:
        _scheduled(ctx, rec, spec)
    else:
        _once(ctx, rec, spec)


def _follow(status: kopf.Status, spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("schedule")) or status.get("phase") not in TERMINAL_PHASES


@kopf.on.resume(GROUP, VERSION, "batchpredictions")
@kopf.on.create(GROUP, VERSION, "batchpredictions")
@kopf.on.update(GROUP, VERSION, "batchpredictions", field="spec")
@kopf.timer(
    GROUP,
    VERSION,
    "batchpredictions",
    interval=IMPORT_SETTINGS.resync_seconds,
    when=_follow,
)
def reconcile_batchprediction(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    run_reconcile(KIND, body, patch, memo, reconcile)
