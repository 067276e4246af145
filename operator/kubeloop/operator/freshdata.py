"""Fresh data for a run: a TrainingJob with ``datasetRef.fresh`` trains on a snapshot taken
after it was created, never on the data the last model already saw.

The TrainingJob asks by writing its request time (its creation time) into the Dataset's
``kubeloop.io/snapshot-requested`` annotation; the Dataset runs one snapshot Job per
request newer than the last one it served (the Job's name derives from the request, so a
repeated request makes no twin) and records in ``status.lastSnapshot`` which request the
finished Job served, its digest, and whether the digest changed. Both sides decide with
the pure functions here; the handlers only apply the decision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubeloop.api.base import duration_seconds
from kubeloop.api.v1alpha1 import DEFAULT_FRESH_TIMEOUT, DatasetRef
from kubeloop.operator.timestamps import parse

#: The annotation on a Dataset asking for a snapshot newer than its value (RFC 3339).
REQUEST_ANNOTATION = "kubeloop.io/snapshot-requested"


@dataclass(frozen=True)
class Use:
    """Train on ``version``; ``message`` says how it was chosen."""

    version: str
    message: str = ""


@dataclass(frozen=True)
class Wait:
    """No usable version yet: ``reason``/``message`` for the Ready condition; ``request`` is
    the snapshot request to put on the Dataset (None: nothing to ask)."""

    reason: str
    message: str
    request: datetime | None = None


@dataclass(frozen=True)
class Fail:
    """Give up without training: the run ends Failed with this reason."""

    reason: str
    message: str


Decision = Use | Wait | Fail


def _ready(status: dict[str, Any]) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def _current(name: str, status: dict[str, Any]) -> Decision:
    """Today's behaviour without ``fresh``: the Dataset's current version once it is Ready."""
    ready = _ready(status)
    if ready is None or ready.get("status") != "True" or not status.get("version"):
        return Wait("DatasetNotReady", f"Dataset {name} is not Ready")
    return Use(str(status["version"]))


def _served(name: str, requested: datetime, status: dict[str, Any]) -> Decision | None:
    """The outcome of the snapshot that served ``requested``, if one has finished."""
    last = status.get("lastSnapshot") or {}
    served = parse(last.get("request"))
    if served is None or served < requested:
        return None
    if not last.get("succeeded"):
        ready = _ready(status) or {}
        why = ready.get("message") or last.get("message") or "snapshot failed"
        return Fail("SnapshotFailed", f"Dataset {name}: fresh snapshot failed: {why}")
    digest = str(last["digest"])
    if last.get("changed"):
        return Use(digest, f"fresh snapshot of Dataset {name}: new version {digest}")
    return Use(digest, f"fresh snapshot of Dataset {name}: data unchanged, {digest}")


def dataset_version_for(
    ref: DatasetRef,
    chosen: str | None,
    created: datetime,
    dataset_status: dict[str, Any],
    now: datetime,
) -> Decision:
    """Which data version a TrainingJob created at ``created`` trains on.

    A version once chosen (``chosen``, from its status) stays; a pinned ``version`` is
    used as is; without ``fresh`` the Dataset's current version; with ``fresh`` the
    digest of the first snapshot that served a request at least as new as ``created``,
    or a failure when that snapshot failed or none came within ``freshTimeout``.
    """
    if chosen:
        return Use(chosen)
    if ref.version is not None:
        return Use(ref.version)
    if not ref.fresh:
        return _current(ref.name, dataset_status)
    served = _served(ref.name, created, dataset_status)
    if served is not None:
        return served
    timeout = ref.fresh_timeout or DEFAULT_FRESH_TIMEOUT
    if now - created > timedelta(seconds=duration_seconds(timeout)):
        return Fail(
            "SnapshotTimeout",
            f"no snapshot of Dataset {ref.name} newer than this run within "
            f"{timeout}; the serving model is unchanged",
        )
    return Wait(
        "WaitingForSnapshot",
        f"waiting for a snapshot of Dataset {ref.name} requested at {created.isoformat()}",
        created,
    )


def merged_request(current: str | None, wanted: datetime) -> datetime | None:
    """The annotation value to write so the Dataset serves ``wanted``; None when the one
    there already asks for as new a snapshot (requests only move forward)."""
    have = parse(current)
    return None if have is not None and have >= wanted else wanted


def pending_request(annotations: dict[str, str], status: dict[str, Any]) -> datetime | None:
    """The Dataset's requested snapshot time when no started snapshot serves it yet."""
    wanted = parse(annotations.get(REQUEST_ANNOTATION))
    if wanted is None:
        return None
    last = parse(status.get("snapshotRequest"))
    return None if last is not None and last >= wanted else wanted


def request_suffix(request: datetime) -> str:
    """The Job-name suffix of a request: the same request always names the same Job."""
    return "req-" + hashlib.sha256(request.isoformat().encode()).hexdigest()[:8]


def snapshot_outcome(
    request: datetime | None, previous: str | None, digest: str | None, message: str, time: str
) -> dict[str, Any]:
    """``status.lastSnapshot`` for a finished Job: served ``request``; ``digest`` None when it
    failed with ``message``; ``changed`` compares with the version ``previous`` to it."""
    out: dict[str, Any] = {"time": time, "succeeded": digest is not None}
    if request is not None:
        out["request"] = request.isoformat().replace("+00:00", "Z")
    if digest is None:
        out["message"] = message
    else:
        out.update(digest=digest, changed=digest != previous)
    return out
