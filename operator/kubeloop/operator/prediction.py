"""BatchPrediction: pure deciders and builders (the handler applies what these return).

A one-off BatchPrediction runs one ``kubeloop predict`` Job per spec (its name carries the
spec's hash, so a retry or a restart finds the same Job and an edited spec starts a new
run); a scheduled one owns one CronJob whose Job template the operator re-applies when the
chosen model or data version moves. Each Job carries the versions it scores in its
annotations, so the status a finished Job yields never depends on what the operator
chose since.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubeloop.api.v1alpha1 import (
    BatchPredictionSpec,
    DatasetRef,
    DatasetSpec,
    ModelRef,
    VersionPolicy,
)
from kubeloop.contracts.artifacts import join
from kubeloop.contracts.results import JobResult
from kubeloop.operator.builders import (
    MODEL_LABEL,
    JobTemplate,
    build_job,
    labels,
    owner_reference,
)
from kubeloop.operator.conditions import is_true
from kubeloop.operator.handlers.jobs import Finished
from kubeloop.operator.handlers.modeldeployment import REJECTED, pick_version
from kubeloop.operator.names import child_name
from kubeloop.operator.settings import OperatorSettings

BATCH_PREDICTION_LABEL = "kubeloop.io/batch-prediction"
#: Annotations of a prediction Job: what it scores (read back when it has finished).
MODEL_VERSION_ANNOTATION = "kubeloop.io/model-version"
VERSION_ANNOTATION = "kubeloop.io/version"
DATASET_VERSION_ANNOTATION = "kubeloop.io/dataset-version"
#: A CronJob's name leaves room for the 11 characters its controller appends to each Job's.
CRONJOB_NAME_LIMIT = 52
#: Formats ``kubeloop predict`` reads.
READABLE_FORMATS = ("csv", "parquet")
#: A scheduled run that could not start this long after its time is skipped.
STARTING_DEADLINE_SECONDS = 600
#: Finished Jobs a CronJob keeps (the operator reads the latest only).
JOBS_HISTORY = 3


@dataclass(frozen=True)
class Waiting:
    """Why no run can start yet: the Ready reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Target:
    """What a run scores: the ModelVersion chosen, the data version and its snapshot."""

    model_name: str
    model_version: str
    version: int
    model_uri: str
    model_sha256: str
    dataset_version: str
    data_uri: str
    data_format: str

    def annotations(self) -> dict[str, str]:
        return {
            MODEL_VERSION_ANNOTATION: self.model_version,
            VERSION_ANNOTATION: str(self.version),
            DATASET_VERSION_ANNOTATION: self.dataset_version,
        }


def resolve_model(ref: ModelRef, versions: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The Ready ModelVersion ``ref`` chooses among ``versions`` (the namespace's), and its
    number; :class:`NotYetError` while there is none.

    By name: that version, once Ready (even a Rejected one: naming it is the override). By
    model: the policy of ``ref.version`` as a ModelDeployment applies it (Pinned, else the
    newest Ready version that is not Rejected).
    """
    if ref.name is not None:
        mv = next((m for m in versions if m["metadata"]["name"] == ref.name), None)
        if mv is None:
            raise NotYetError("ModelVersionNotFound", f"ModelVersion {ref.name} not found")
        if not is_true(mv.get("status")):
            raise NotYetError("ModelNotReady", f"ModelVersion {ref.name} is not Ready")
        return mv, int(mv["spec"]["version"])
    ready = {
        int(m["spec"]["version"]): m
        for m in versions
        if m["spec"].get("modelName") == ref.model_name and is_true(m.get("status"))
    }
    rejected = frozenset(v for v, m in ready.items() if is_true(m.get("status"), REJECTED))
    policy = ref.version or VersionPolicy()
    chosen = pick_version(policy, ready, rejected)
    if chosen is None:
        wanted = f"version {policy.pinned}" if policy.policy == "Pinned" else "a version"
        raise NotYetError("NoReadyVersion", f"waiting for {wanted} of {ref.model_name} to be Ready")
    return ready[chosen], chosen


class NotYetError(Exception):
    """A dependency is not there or not Ready: the Ready reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.waiting = Waiting(reason, message)


def resolve_data(
    ref: DatasetRef,
    dataset: dict[str, Any] | None,
    locate: Callable[[dict[str, Any], str], str],
) -> tuple[str, str, str]:
    """(data version, snapshot URI, format) of the Dataset ``ref`` names: the pinned version,
    else the current one; :class:`NotYetError` while there is none. ``locate(dataset, version)``
    finds a version's snapshot (:func:`kubeloop.operator.handlers.trainingjob.snapshot_uri`).
    """
    if dataset is None:
        raise NotYetError("DatasetNotFound", f"Dataset {ref.name} not found")
    fmt = DatasetSpec.model_validate(dataset["spec"]).snapshot_format
    if fmt not in READABLE_FORMATS:
        raise NotYetError(
            "UnsupportedDataFormat",
            f"Dataset {ref.name} is stored as {fmt}; kubeloop predict reads csv or parquet",
        )
    status = dataset.get("status") or {}
    version = ref.version
    if version is None:
        if not is_true(status) or not status.get("version"):
            raise NotYetError("DatasetNotReady", f"Dataset {ref.name} is not Ready")
        version = str(status["version"])
    return version, locate(dataset, version), fmt


def target(mv: dict[str, Any], number: int, data: tuple[str, str, str]) -> Target:
    """The run's :class:`Target` from the chosen version and :func:`resolve_data`'s answer."""
    artifact = mv["spec"]["artifact"]
    return Target(
        model_name=mv["spec"]["modelName"],
        model_version=mv["metadata"]["name"],
        version=number,
        model_uri=artifact["uri"],
        model_sha256=artifact["sha256"],
        dataset_version=data[0],
        data_uri=data[1],
        data_format=data[2],
    )


def output_refused(uri: str, settings: OperatorSettings, namespace: str) -> str | None:
    """Why a run may not write ``uri``, or None. Inside the artifact store only
    ``predictions/<namespace>/`` is writable: a prediction must never replace a model or a
    snapshot, nor another namespace's output."""
    root = _local(settings.artifact_root).rstrip("/") + "/"
    target_ = _local(uri)
    if not target_.startswith(root) and target_ != root.rstrip("/"):
        return None
    allowed = _local(join(settings.artifact_root, "predictions", namespace)).rstrip("/") + "/"
    if target_.startswith(allowed):
        return None
    return (
        f"output.uri {uri} is inside the artifact store ({settings.artifact_root}), where a "
        f"prediction may only write under {allowed}"
    )


def _local(uri: str) -> str:
    """A file URI as its normalised path (.. resolved); other URIs as they are."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if path.startswith("/"):
        return posixpath.normpath(path)
    return uri


def spec_hash(spec: BatchPredictionSpec) -> str:
    """A digest of what a run does (``suspend`` excluded: resuming is not a new run)."""
    wire = spec.to_wire()
    wire.pop("suspend", None)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def job_name(bp: dict[str, Any], spec: BatchPredictionSpec) -> str:
    """The Job of a one-off BatchPrediction's spec (the uid guards against a same-named
    successor finding its predecessor's Job)."""
    uid = bp["metadata"]["uid"][:5]
    return child_name(bp["metadata"]["name"], f"predict-{uid}-{spec_hash(spec)[:8]}")


def cronjob_name(bp: dict[str, Any]) -> str:
    """The CronJob of a scheduled BatchPrediction."""
    return child_name(bp["metadata"]["name"], bp["metadata"]["uid"][:5], CRONJOB_NAME_LIMIT)


def scheduled_job_name(cronjob: str, scheduled: datetime) -> str:
    """The Job the CronJob controller creates for the run scheduled at ``scheduled``
    (``<cronjob>-<minutes since the epoch>``, as the controller names it)."""
    return f"{cronjob}-{int(scheduled.timestamp()) // 60}"


def _template(
    bp: dict[str, Any], spec: BatchPredictionSpec, chosen: Target, settings: OperatorSettings
) -> dict[str, Any]:
    """The prediction Job for ``chosen``, named as a one-off run."""
    args = [
        "predict",
        "--model",
        chosen.model_uri,
        "--sha256",
        chosen.model_sha256,
        "--data",
        chosen.data_uri,
        "--data-format",
        chosen.data_format,
        "--out",
        spec.output.uri,
    ]
    if spec.output.format:
        args += ["--format", spec.output.format]
    template = JobTemplate(
        name=job_name(bp, spec),
        labels=labels(
            "predict",
            **{BATCH_PREDICTION_LABEL: bp["metadata"]["name"], MODEL_LABEL: chosen.model_name},
        ),
        args=args,
        image=spec.image or settings.trainer_image,
        resources=spec.resources.to_wire() if spec.resources else settings.trainer_resources,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
    )
    job = build_job(bp, template, settings)
    job["metadata"]["annotations"] = chosen.annotations()
    return job


def build_prediction_job(
    bp: dict[str, Any], spec: BatchPredictionSpec, chosen: Target, settings: OperatorSettings
) -> dict[str, Any]:
    """The Job of a one-off BatchPrediction: ``kubeloop predict`` on the chosen versions."""
    return _template(bp, spec, chosen, settings)


def build_prediction_cronjob(
    bp: dict[str, Any], spec: BatchPredictionSpec, chosen: Target, settings: OperatorSettings
) -> dict[str, Any]:
    """The CronJob of a scheduled BatchPrediction: the same Job, on ``spec.schedule``.

    Runs never overlap (each replaces the same output); a run that cannot start within
    :data:`STARTING_DEADLINE_SECONDS` of its time is skipped rather than run late.
    """
    job = _template(bp, spec, chosen, settings)
    meta = job["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(bp),
            "namespace": bp["metadata"]["namespace"],
            "labels": meta["labels"],
            "ownerReferences": [owner_reference(bp)],
        },
        "spec": {
            "schedule": spec.schedule,
            "suspend": spec.suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": JOBS_HISTORY,
            "failedJobsHistoryLimit": JOBS_HISTORY,
            "jobTemplate": {
                "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
                "spec": job["spec"],
            },
        },
    }


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run puts in status: the fields, and the Succeeded condition."""

    succeeded: bool
    fields: dict[str, Any]
    reason: str
    message: str


def scored_versions(job: dict[str, Any]) -> dict[str, Any]:
    """The status fields naming what a prediction Job scores, from its annotations."""
    notes = job["metadata"].get("annotations") or {}
    number = notes.get(VERSION_ANNOTATION)
    return {
        "modelVersion": notes.get(MODEL_VERSION_ANNOTATION),
        "version": int(number) if number and number.isdigit() else None,
        "datasetVersion": notes.get(DATASET_VERSION_ANNOTATION),
    }


def run_outcome(job: dict[str, Any], done: Finished) -> RunOutcome:
    """Status of a finished prediction Job from its result (its termination message) and
    the versions its annotations name. A Job that completed without a result, or whose
    result is not a successful prediction, failed."""
    fields: dict[str, Any] = {"observedJob": job["metadata"]["name"], **scored_versions(job)}
    result = done.result
    if done.state == "Succeeded" and _predicted(result):
        assert result is not None
        fields.update(
            rows=result.rows,
            durationSeconds=result.duration_seconds,
            outputUri=result.output_uri,
            outputSha256=result.sha256,
            reason=None,
        )
        message = f"{result.rows} rows to {result.output_uri} (sha256 {result.sha256})"
        return RunOutcome(True, fields, "PredictionSucceeded", message)
    reason = done.reason
    if done.state == "Succeeded":
        reason = "kubeloop predict reported no output in its termination message"
    fields.update(reason=reason)
    return RunOutcome(False, fields, "PredictionFailed", reason)


def run_times(job: dict[str, Any]) -> tuple[str | None, str | None]:
    """When a finished Job started and ended, as the Job controller recorded it (a failed
    Job has no completionTime: its Failed condition's time is the end)."""
    status = job.get("status") or {}
    end = status.get("completionTime")
    if end is None:
        failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
        end = failed[0].get("lastTransitionTime") if failed else None
    return status.get("startTime"), end


def _predicted(result: JobResult | None) -> bool:
    return (
        result is not None
        and result.kind == "predict"
        and result.status == "succeeded"
        and result.rows is not None
        and bool(result.sha256)
    )
