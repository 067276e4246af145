"""The retrain policy: turn a trigger (an alert, a schedule tick) into at most one TrainingJob.

:func:`decide` is pure: from the trigger, the ModelDeployment as stored, the
TrainingJobs in its namespace and the time, it says what to do. :func:`act`
does it: under the ModelDeployment's reconcile lock it re-reads the object,
decides, records the trigger in ``status`` (so a re-delivery after a restart is
still a duplicate), creates the TrainingJob, posts an Event and counts the decision.

Two operator replicas each run a receiver, so two alerts for one deployment may be
decided at the same moment in two processes. The status write is therefore made only
if the ModelDeployment is still at the version the decision was read from (else both
read and decide again), and it comes *before* the create: the record of a retrain
about to be made (``lastRetrain``) is the claim the other replica's ``maxConcurrent``
and cooldown checks see, for :data:`CLAIM_SECONDS`, even while its TrainingJob is not
listed yet. A process that dies between the claim and the create leaves a claim that
the same trigger, delivered again within that time, completes.

Guard rails, in the order they are checked:

1. ``unknown-deployment``: no such ModelDeployment (or not readable).
2. ``disabled``: no ``spec.retrain`` or ``enabled: false`` (or a spec that does not parse).
3. ``duplicate``: this trigger's key is in ``status.retrainKeys``, or the
   TrainingJob its key names exists already. The key of an alert is its
   fingerprint and start time, so one firing episode retrains at most once.
4. ``max-concurrent``: ``maxConcurrent`` TrainingJobs of the model are unfinished.
5. ``cooldown``: the last retrain was less than ``cooldown`` ago.
6. ``created``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubeloop.api.base import API_VERSION, duration_seconds
from kubeloop.api.v1alpha1 import CompareTo, Gate, ModelDeploymentSpec, TrainingJobSpec
from kubeloop.contracts.status import TRAINING_TERMINAL_PHASES
from kubeloop.operator import builders, metrics
from kubeloop.operator.alerts.payload import Alert
from kubeloop.operator.handlers.common import Context
from kubeloop.operator.kube import ConflictError, Kube
from kubeloop.operator.names import child_name
from kubeloop.operator.timestamps import parse, rfc3339

log = logging.getLogger("kubeloop.retrain")
#: How long a recorded retrain whose TrainingJob is not listed counts as being created
#: (the claim; see the module docstring). After it, such a TrainingJob was deleted.
CLAIM_SECONDS = 60.0
#: Decisions retried when another writer changed the ModelDeployment in between.
DECIDE_TRIES = 5

Decision = Literal[
    "created", "cooldown", "duplicate", "max-concurrent", "disabled", "unknown-deployment"
]
TriggerKind = Literal["alert", "schedule"]
MD_KIND = "ModelDeployment"

#: Labels and annotations of a TrainingJob the policy created.
DEPLOYMENT_LABEL = builders.DEPLOYMENT_LABEL
TRIGGER_LABEL = "kubeloop.io/retrain-trigger"
FINGERPRINT_LABEL = "kubeloop.io/alert-fingerprint"
ALERTNAME_ANNOTATION = "kubeloop.io/alert-name"
FINGERPRINT_ANNOTATION = "kubeloop.io/alert-fingerprint"
STARTS_AT_ANNOTATION = "kubeloop.io/alert-starts-at"
VALUE_ANNOTATION = "kubeloop.io/alert-value"
KEY_ANNOTATION = "kubeloop.io/retrain-key"
TICK_ANNOTATION = "kubeloop.io/schedule-tick"

_REASONS: dict[Decision, str] = {
    "created": "RetrainCreated",
    "cooldown": "RetrainCooldown",
    "duplicate": "RetrainDuplicate",
    "max-concurrent": "RetrainMaxConcurrent",
    "disabled": "RetrainDisabled",
    "unknown-deployment": "RetrainUnknownDeployment",
}


@dataclass(frozen=True)
class Trigger:
    """Why a retrain is asked for: one firing alert, or one schedule tick."""

    kind: TriggerKind
    key: str
    time: datetime
    alert_name: str | None = None
    fingerprint: str | None = None
    value: str | None = None

    @classmethod
    def from_alert(cls, alert: Alert) -> Trigger:
        return cls(
            kind="alert",
            key=alert.key,
            time=alert.starts_at,
            alert_name=alert.name or None,
            fingerprint=alert.fingerprint,
            value=alert.value,
        )

    @classmethod
    def from_tick(cls, tick: datetime) -> Trigger:
        return cls(kind="schedule", key=f"schedule:{rfc3339(tick)}", time=tick)

    def describe(self) -> str:
        if self.kind == "schedule":
            return f"schedule tick {rfc3339(self.time)}"
        value = f", value {self.value}" if self.value else ""
        return f"alert {self.alert_name or '?'} (fingerprint {self.fingerprint}{value})"


@dataclass(frozen=True)
class Verdict:
    """A decision and the sentence that explains it (the Event message)."""

    decision: Decision
    message: str


def training_job_name(md_name: str, trigger: Trigger) -> str:
    """Deterministic: the same trigger for the same ModelDeployment names the same TrainingJob."""
    digest = hashlib.sha256(f"{md_name}\n{trigger.key}".encode()).hexdigest()[:10]
    return child_name(md_name, f"retrain-{digest}")


def claimed(
    status: dict[str, Any], trainingjobs: Sequence[dict[str, Any]], now: datetime
) -> str | None:
    """The TrainingJob a retrain recorded less than :data:`CLAIM_SECONDS` ago that is not
    listed yet: being created (by this or another replica), or lost to a crash."""
    record = status.get("lastRetrain") or {}
    name, when = record.get("trainingJob"), parse(record.get("time"))
    if not name or when is None or now - when >= timedelta(seconds=CLAIM_SECONDS):
        return None
    return None if any(tj["metadata"]["name"] == name for tj in trainingjobs) else str(name)


def unfinished(
    spec: ModelDeploymentSpec, trainingjobs: Sequence[dict[str, Any]], pending: str | None = None
) -> list[str]:
    """Names of TrainingJobs of the retrain template's model that have not finished, and
    the ``pending`` one a claim says is being created."""
    assert spec.retrain is not None
    model = spec.retrain.template.model_name
    listed = {
        tj["metadata"]["name"]
        for tj in trainingjobs
        if (tj.get("spec") or {}).get("modelName") == model
        and (tj.get("status") or {}).get("phase") not in TRAINING_TERMINAL_PHASES
        and not tj["metadata"].get("deletionTimestamp")
    }
    return sorted(listed | ({pending} if pending else set()))


def decide(
    trigger: Trigger,
    md: dict[str, Any] | None,
    trainingjobs: Sequence[dict[str, Any]],
    now: datetime,
) -> Verdict:
    """What the policy of ``md`` says about ``trigger`` (pure; see the module docstring)."""
    if md is None:
        return Verdict("unknown-deployment", f"{trigger.describe()}: no such ModelDeployment")
    try:
        spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
    except ValidationError:
        return Verdict("disabled", f"{trigger.describe()}: spec is invalid")
    if spec.retrain is None or not spec.retrain.enabled:
        return Verdict("disabled", f"{trigger.describe()}: retraining is not enabled")
    status = md.get("status") or {}
    name = training_job_name(md["metadata"]["name"], trigger)
    pending = claimed(status, trainingjobs, now)
    if pending == name:  # this trigger's own claim, not carried out yet
        return Verdict("created", f"{trigger.describe()}: created TrainingJob {name}")
    if trigger.key in (status.get("retrainKeys") or []) or any(
        tj["metadata"]["name"] == name for tj in trainingjobs
    ):
        return Verdict("duplicate", f"{trigger.describe()}: already handled (TrainingJob {name})")
    running = unfinished(spec, trainingjobs, pending)
    if len(running) >= spec.retrain.max_concurrent:
        return Verdict(
            "max-concurrent",
            f"{trigger.describe()}: {len(running)} TrainingJob(s) still running "
            f"({', '.join(running[:5])}); maxConcurrent is {spec.retrain.max_concurrent}",
        )
    last = parse((status.get("lastRetrain") or {}).get("time"))
    cooldown = timedelta(seconds=duration_seconds(spec.retrain.cooldown))
    if last is not None and now - last < cooldown:
        return Verdict(
            "cooldown",
            f"{trigger.describe()}: last retrain at {rfc3339(last)}, cooldown "
            f"{spec.retrain.cooldown} lasts until {rfc3339(last + cooldown)}",
        )
    return Verdict("created", f"{trigger.describe()}: created TrainingJob {name}")


def newest_dataset_version(dataset: dict[str, Any] | None) -> str | None:
    """The Dataset's current (newest) data version, if it has one."""
    status = (dataset or {}).get("status") or {}
    if status.get("version"):
        return str(status["version"])
    history = status.get("history") or []
    return str(history[0]["version"]) if history and history[0].get("version") else None


def with_serving_champion(template: TrainingJobSpec) -> TrainingJobSpec:
    """A copy of the retrain template whose challenger must beat the model being served,
    unless the template says otherwise (``gate.compareTo``)."""
    spec = template.model_copy(deep=True)
    if spec.gate is None:
        spec.gate = Gate()
    if spec.gate.compare_to is None:
        spec.gate.compare_to = CompareTo(policy="Serving")
    return spec


def build_training_job(
    md: dict[str, Any], spec: ModelDeploymentSpec, trigger: Trigger, data_version: str | None
) -> dict[str, Any]:
    """The TrainingJob a retrain creates: the template, on fresh data, linked to its trigger.

    A retrain exists because the served data went stale, so by default it trains on a
    snapshot newer than itself (``datasetRef.fresh: true``, written out so the run says
    what it does; see :mod:`kubeloop.operator.freshdata`). A template that pins a
    ``version`` keeps it; one with ``fresh: false`` takes the Dataset's newest version.

    No owner reference: deleting the ModelDeployment must not take the
    TrainingJobs (and through them the ModelVersions) with it.
    """
    assert spec.retrain is not None
    template = with_serving_champion(spec.retrain.template)
    ref = template.dataset_ref
    if ref.fresh is None and ref.version is None:
        ref.fresh = True
    elif data_version is not None and not ref.fresh and ref.version is None:
        ref.version = data_version
    md_name = md["metadata"]["name"]
    labels = {
        builders.MANAGED_BY_LABEL: builders.MANAGED_BY,
        DEPLOYMENT_LABEL: md_name,
        TRIGGER_LABEL: trigger.kind,
    }
    annotations = {KEY_ANNOTATION: trigger.key}
    if trigger.kind == "alert":
        labels[FINGERPRINT_LABEL] = str(trigger.fingerprint)
        annotations.update(
            {
                ALERTNAME_ANNOTATION: trigger.alert_name or "",
                FINGERPRINT_ANNOTATION: str(trigger.fingerprint),
                STARTS_AT_ANNOTATION: trigger.time.astimezone(UTC).isoformat(),
            }
        )
        if trigger.value is not None:
            annotations[VALUE_ANNOTATION] = trigger.value
    else:
        annotations[TICK_ANNOTATION] = rfc3339(trigger.time)
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": training_job_name(md_name, trigger),
            "namespace": md["metadata"]["namespace"],
            "labels": labels,
            "annotations": annotations,
        },
        "spec": template.to_wire(),
    }


def status_patch(
    md: dict[str, Any], trigger: Trigger, tj_name: str | None, now: datetime, keep: int
) -> dict[str, Any]:
    """The status keys the policy owns: the trigger recorded, ``lastRetrain`` when one was made."""
    keys = [k for k in ((md.get("status") or {}).get("retrainKeys") or []) if k != trigger.key]
    patch: dict[str, Any] = {"retrainKeys": [trigger.key, *keys][:keep]}
    if tj_name is not None:
        record: dict[str, Any] = {
            "time": rfc3339(now),
            "trainingJob": tj_name,
            "trigger": trigger.kind,
        }
        if trigger.fingerprint:
            record["fingerprint"] = trigger.fingerprint
        patch["lastRetrain"] = record
    return patch


def build_event(
    md: dict[str, Any], verdict: Verdict, now: datetime, instance: str
) -> dict[str, Any]:
    """A core/v1 Event on the ModelDeployment reporting one decision."""
    meta = md["metadata"]
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{secrets.token_hex(8)}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": md.get("apiVersion", API_VERSION),
            "kind": MD_KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": _REASONS[verdict.decision],
        "message": verdict.message[:1024],
        "type": "Normal",
        "source": {"component": "kubeloop-operator"},
        "reportingComponent": "kubeloop-operator",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _get_md(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.get(API_VERSION, MD_KIND, namespace, name)
    except ApiException as exc:
        if exc.status in (403, 404):  # a namespace this operator may not read
            return None
        raise


def needs_record(
    md: dict[str, Any], trigger: Trigger, verdict: Verdict, created: str | None
) -> bool:
    """Whether the trigger's key goes into the status (pure).

    A created TrainingJob always. Alerts: a skipped one may be acted on when
    re-delivered after the cooldown, so only a duplicate is recorded. Schedule
    ticks: each is decided once. A key already recorded (a re-delivery) needs no write.
    """
    recorded = trigger.key in ((md.get("status") or {}).get("retrainKeys") or [])
    if created:
        return True
    return not recorded and (verdict.decision == "duplicate" or trigger.kind == "schedule")


def _create(kube: Kube, md: dict[str, Any], trigger: Trigger) -> bool:
    """Create the TrainingJob of a ``created`` verdict; False when it exists already."""
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    assert spec.retrain is not None
    namespace = md["metadata"]["namespace"]
    dataset = kube.get(API_VERSION, "Dataset", namespace, spec.retrain.template.dataset_ref.name)
    try:
        kube.create(
            build_training_job(md, spec, trigger, newest_dataset_version(dataset)), exist_ok=False
        )
    except ConflictError:
        return False
    metrics.CHILDREN_CREATED.labels(kind="TrainingJob").inc()
    return True


def _report(
    kube: Kube, md: dict[str, Any], trigger: Trigger, verdict: Verdict, now: datetime
) -> None:
    """Log and count the decision, and post it as an Event on the ModelDeployment."""
    namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
    log.info("%s/%s: %s: %s", namespace, name, verdict.decision, verdict.message)
    metrics.RETRAIN_DECISIONS.labels(decision=verdict.decision, trigger=trigger.kind).inc()
    try:
        kube.create(build_event(md, verdict, now, socket.gethostname()))
    except (ApiException, ConflictError) as exc:  # an Event is a report, not the decision
        log.warning("%s/%s: could not post Event: %s", namespace, name, exc)


def act(
    ctx: Context, trigger: Trigger, namespace: str, name: str, now: datetime | None = None
) -> Verdict:
    """Decide on ``trigger`` for one ModelDeployment and carry the decision out (idempotent)."""
    kube = ctx.kube
    md = _get_md(kube, namespace, name)
    if md is None:
        verdict = decide(trigger, None, [], now or datetime.now(UTC))
        log.warning("%s/%s: %s", namespace, name, verdict.message)
        metrics.RETRAIN_DECISIONS.labels(decision=verdict.decision, trigger=trigger.kind).inc()
        return verdict
    with ctx.locked(md["metadata"]["uid"]):  # this process; other replicas: see below
        for attempt in range(DECIDE_TRIES):
            md = _get_md(kube, namespace, name)  # fresh, now that no one here is deciding
            if md is None:
                return act(ctx, trigger, namespace, name, now)
            current = now or datetime.now(UTC)
            trainingjobs = kube.list(API_VERSION, "TrainingJob", namespace)
            try:
                verdict = decide(trigger, md, trainingjobs, current)
                verdict = _carry_out(ctx, md, trigger, verdict, current)
                break
            except ConflictError:  # written since it was read: by another replica's decision?
                if attempt == DECIDE_TRIES - 1:
                    raise
    _report(kube, md, trigger, verdict, current)
    return verdict


def _carry_out(
    ctx: Context, md: dict[str, Any], trigger: Trigger, verdict: Verdict, now: datetime
) -> Verdict:
    """Record the verdict on the ModelDeployment as it was read (ConflictError when it has
    changed since), then create the TrainingJob of a ``created`` one; what happened."""
    meta = md["metadata"]
    tj_name = training_job_name(meta["name"], trigger) if verdict.decision == "created" else None
    if needs_record(md, trigger, verdict, tj_name):
        patch = status_patch(md, trigger, tj_name, now, ctx.settings.retrain_keys_limit)
        ctx.kube.patch_status(
            MD_KIND,
            meta["namespace"],
            meta["name"],
            patch,
            resource_version=meta["resourceVersion"],
        )
    if tj_name is not None and not _create(ctx.kube, md, trigger):
        return Verdict("duplicate", f"{trigger.describe()}: TrainingJob {tj_name} exists already")
    return verdict
