"""Event-driven reconciles: a parent reconciles as soon as a child it waits on changes.

Why this design: kopf timers would have every stage wait for the next tick. Instead the
operator watches the children it owns (label ``app.kubernetes.io/managed-by=kubeloop``,
kinds in :data:`~kubeloop.operator.children.WATCHED`) and the Kubeloop objects one kind
waits on in another (a ModelVersion for ModelDeployments and BatchPredictions, a Dataset
for TrainingJobs and BatchPredictions). When what a parent reads of a child moves (a
Job's state, a Deployment's readiness, a CronJob's latest run), or someone else changes
or deletes a child, the parent's reconcile runs right there, from the event, on the
parent's body held in a kopf index (so nothing is listed or read to find it). It is
serialised with every other pass of that parent by :meth:`Context.locked` and writes
status like :func:`run_reconcile`; wake-ups that arrive while a pass waits for the lock
fold into that pass. No annotation is written to wake anyone. The timers left are the
long safety resync and the ones where time itself is the event (canary steps, refresh
rounds, schedules).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubeloop.api.base import GROUP, VERSION
from kubeloop.contracts.status import TRAINING_TERMINAL_PHASES
from kubeloop.operator import builders
from kubeloop.operator.children import WATCHED
from kubeloop.operator.handlers import (
    batchprediction,
    dataset,
    modeldeployment,
    modelversion,
    trainingjob,
)
from kubeloop.operator.handlers.common import Context, Reconcile, context, plain, reconcile_now
from kubeloop.operator.handlers.jobs import job_state

log = logging.getLogger("kubeloop.watch")

Step = Callable[[Context, Reconcile], None]
#: Each parent kind: its plural and its reconcile step.
PARENTS: dict[str, tuple[str, Step]] = {
    "Dataset": ("datasets", dataset.reconcile),
    "TrainingJob": ("trainingjobs", trainingjob.reconcile),
    "ModelVersion": ("modelversions", modelversion.reconcile),
    "ModelDeployment": ("modeldeployments", modeldeployment.reconcile),
    "BatchPrediction": ("batchpredictions", batchprediction.reconcile),
}
MANAGED = {builders.MANAGED_BY_LABEL: builders.MANAGED_BY}


def child_summary(obj: Mapping[str, Any]) -> Any:
    """What a parent reads of a child: a Job's state, a Deployment's readiness, a
    CronJob's latest run; None for the other kinds (only their changes matter)."""
    kind = obj.get("kind")
    if kind == "Job":
        return job_state(dict(obj))
    if kind == "Deployment":
        return modeldeployment.deployment_ready(dict(obj))
    if kind == "CronJob":
        status = obj.get("status") or {}
        return (status.get("lastScheduleTime"), len(status.get("active") or []))
    return None


def source_summary(obj: Mapping[str, Any]) -> Any:
    """What a dependent reads of a Dataset or ModelVersion: its version and conditions."""
    status = obj.get("status") or {}
    return (status.get("version"), status.get("verifiedSha256"), status.get("conditions"))


def sources(kind: str, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (kind, key) of the Kubeloop objects a parent waits on, from its spec: a Dataset
    by name, ModelVersions by model name (or ``@name`` for one named version)."""
    dataset_ref = (spec.get("datasetRef") or {}).get("name")
    found: list[tuple[str, str]] = []
    if kind in ("TrainingJob", "BatchPrediction") and dataset_ref:
        found.append(("Dataset", str(dataset_ref)))
    model_ref = spec.get("modelRef") or {}
    model = spec.get("modelName") or model_ref.get("modelName")
    if kind in ("ModelDeployment", "BatchPrediction") and model:
        found.append(("ModelVersion", str(model)))
    if kind == "BatchPrediction" and model_ref.get("name"):
        found.append(("ModelVersion", f"@{model_ref['name']}"))
    return found


def source_keys(obj: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The keys :func:`sources` gives the dependents of a Dataset or ModelVersion."""
    kind, meta = str(obj["kind"]), obj["metadata"]
    if kind == "Dataset":
        return [(kind, meta["namespace"], meta["name"])]
    model = str((obj.get("spec") or {}).get("modelName"))
    return [(kind, meta["namespace"], model), (kind, meta["namespace"], f"@{meta['name']}")]


async def _by_uid(body: kopf.Body, uid: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {uid: plain(body)}  # async: indexing runs in the event loop, not a worker thread


def _make_by_source(kind: str) -> Callable[..., Any]:
    async def by_source(
        spec: kopf.Spec, status: kopf.Status, namespace: str, uid: str, **_: Any
    ) -> dict[tuple[str, str, str], str]:
        if kind == "TrainingJob" and status.get("phase") in TRAINING_TERMINAL_PHASES:
            return {}  # a finished training waits on nothing
        return {(k, namespace, name): uid for k, name in sources(kind, spec)}

    return by_source


for _kind, (_plural, _step) in PARENTS.items():
    kopf.index(GROUP, VERSION, _plural, id=f"{_plural}_by_uid")(_by_uid)
    if _kind in ("TrainingJob", "ModelDeployment", "BatchPrediction"):
        kopf.index(GROUP, VERSION, _plural, id=f"{_plural}_by_source")(_make_by_source(_kind))


def wake(ctx: Context, kind: str, uid: str, indices: Mapping[str, Any]) -> None:
    """Reconcile the parent ``kind``/``uid`` now, from its body in the index."""
    plural, step = PARENTS[kind]
    index = indices.get(f"{plural}_by_uid")
    if index is None or uid not in index:
        return  # not ours (another namespace), or gone
    body = next(iter(index[uid]))
    reconcile_now(kind, body, ctx, step)


def _moved(ctx: Context, event: Mapping[str, Any], obj: Mapping[str, Any], summary: Any) -> bool:
    """Remember ``summary`` for the object; True when it differs from the last one seen.

    The initial listing only records (the resume handlers cover it), and so does a
    creation: the parent that made the child has just reconciled.
    """
    uid = str(obj["metadata"]["uid"])
    kind = event.get("type")
    before = ctx.seen.pop(uid, None) if kind == "DELETED" else ctx.seen.get(uid)
    if kind != "DELETED":
        ctx.seen[uid] = summary
    return kind in ("MODIFIED", "DELETED") and (kind == "DELETED" or before != summary)


def _owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref["kind"]), str(ref["uid"])
    return None


async def _in_thread(ctx: Context, kind: str, uid: str, indices: Mapping[str, Any]) -> None:
    """:func:`wake` in a worker thread (a pass blocks on the API server), with the
    context kopf's Event posting needs."""
    call = functools.partial(wake, ctx, kind, uid, indices)
    await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, call)


async def on_child(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A child changed: forget what the cache knew if someone else changed it, and wake
    its parent when that or what the parent reads of it moved. The checks run in the event
    loop (most events wake nobody); only the parent's pass goes to a worker thread."""
    ctx, obj = context(memo), plain(body)
    external = ctx.children.observe(event.get("type"), obj)
    moved = _moved(ctx, event, obj, child_summary(obj))
    owner = _owner(obj)
    if owner is not None and owner[0] in PARENTS and (external or moved):
        await _in_thread(ctx, owner[0], owner[1], kwargs)


async def on_source(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A Dataset or ModelVersion changed what its dependents read: wake them (side by side:
    one version may be followed by many deployments)."""
    ctx, obj = context(memo), plain(body)
    if event.get("type") == "DELETED":
        (ctx.versions if obj.get("kind") == "ModelVersion" else ctx.datasets).gone(obj)
    if not _moved(ctx, event, obj, source_summary(obj)):
        return
    wakes = []
    for key in source_keys(obj):
        for dependent in ("TrainingJob", "ModelDeployment", "BatchPrediction"):
            index = kwargs.get(f"{PARENTS[dependent][0]}_by_source")
            for uid in list(index.get(key, ())) if index is not None else ():
                wakes.append(_in_thread(ctx, dependent, uid, kwargs))
    await asyncio.gather(*wakes)


async def _child_exists(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, bool]:
    """Record that a child exists (see :class:`~kubeloop.operator.children.AppliedCache`):
    an index, because kopf runs no handler before every index has seen its listing."""
    meta = body["metadata"]
    key = (str(body["apiVersion"]), str(body["kind"]), str(meta["namespace"]), str(meta["name"]))
    context(memo).children.exists(key)
    return {}


for _group, _version, _plural, *_names in WATCHED:
    kopf.index(group=_group, version=_version, plural=_plural, labels=MANAGED, id="child")(
        _child_exists
    )
    kopf.on.event(group=_group, version=_version, plural=_plural, labels=MANAGED)(on_child)
for _plural in ("datasets", "modelversions"):
    kopf.on.event(GROUP, VERSION, _plural, id=f"wake_dependents_of_{_plural}")(on_source)


@kopf.index(GROUP, VERSION, "modelversions", id="versions_seen")
@kopf.index(GROUP, VERSION, "datasets", id="datasets_seen")
async def _source_seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, bool]:
    """Keep :attr:`Context.versions` and :attr:`Context.datasets` (passes read them there):
    an index, so each has its initial listing before any handler runs; deletions come to
    :func:`on_source`."""
    ctx, obj = context(memo), plain(body)
    (ctx.versions if obj.get("kind") == "ModelVersion" else ctx.datasets).seen(obj)
    return {}
