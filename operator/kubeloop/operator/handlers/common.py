"""What every handler shares: the context, one reconcile pass and its status writes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from kubeloop.api.base import API_VERSION, KubeModel
from kubeloop.contracts.status import READY
from kubeloop.operator import metrics
from kubeloop.operator.children import AppliedCache, Watched
from kubeloop.operator.conditions import set_condition
from kubeloop.operator.kube import Kube, unavailable
from kubeloop.operator.settings import OperatorSettings

#: The settings the kopf decorators need when a handler module is imported (timer
#: intervals), before the startup handler has built the :class:`Context`.
IMPORT_SETTINGS = OperatorSettings()
log = logging.getLogger("kubeloop.reconcile")
#: How soon (at most) a pass that found the API server unavailable is tried again.
API_RETRY_SECONDS = 5.0
#: Where kopf keeps its bookkeeping annotations (see ``app.configure``).
KOPF_PREFIX = "kopf.kubeloop.io"
#: kopf's marker and diff base from when its prefix was ``kubeloop.io``: while the marker
#: is on an object, kopf still ignores every ``kubeloop.io/`` annotation of it.
OLD_BOOKKEEPING = ("kubeloop.io/kopf-managed", "kubeloop.io/last-handled-configuration")


@dataclass
class Context:
    """Long-lived state shared by the handlers (kept in kopf's ``memo``)."""

    settings: OperatorSettings
    kube: Kube
    _locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    _guard: threading.Lock = field(default_factory=threading.Lock)
    #: What a parent last read of each watched child or source (by uid).
    seen: dict[str, Any] = field(default_factory=dict)
    #: Per parent uid: the resourceVersion and status of the operator's last status write.
    _written: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: Parents with an event-driven pass waiting for their lock.
    _pending: set[str] = field(default_factory=set)
    #: Objects this process created or found (never watched, so never created twice).
    present: set[str] = field(default_factory=set)
    #: The ModelVersions and Datasets as watched (see :meth:`model_versions`, :meth:`dataset`).
    versions: Watched = field(default_factory=Watched)
    datasets: Watched = field(default_factory=Watched)

    @property
    def children(self) -> AppliedCache:
        return self.kube.cache

    @contextmanager
    def locked(self, uid: str) -> Iterator[None]:
        """Serialise reconciles of one object (a timer and a change handler may overlap)."""
        with self._guard:
            lock = self._locks[uid]
        with lock:
            yield

    def claim(self, uid: str) -> bool:
        """Mark an event-driven pass of ``uid`` as waiting; False when one already waits
        (it has not read the object yet, so it will see this change too)."""
        with self._guard:
            if uid in self._pending:
                return False
            self._pending.add(uid)
            return True

    def release(self, uid: str) -> None:
        with self._guard:
            self._pending.discard(uid)

    def current(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the status this operator wrote last, when ``body`` predates that
        write: the watch that brings our own write back may lag behind the next pass.

        resourceVersions are compared as the integers etcd-backed API servers give (a
        non-integer one is taken as it is).
        """
        meta = body["metadata"]
        written = self._written.get(str(meta["uid"]))
        rv = str(meta.get("resourceVersion") or "")
        if written is None or not rv.isdigit() or int(rv) >= written[0]:
            return body
        return {**body, "status": written[1]}

    def model_versions(self, namespace: str) -> list[dict[str, Any]]:
        """Every ModelVersion in ``namespace``: as the operator's watch holds them (no
        request), else listed. A pass that chooses what to serve or train against may read
        the watch: a version's change wakes its dependents after the watch has it. A pass
        that deletes what no version names lists instead (a version created a moment ago
        must not be missed)."""
        if self.versions.active:
            return self.versions.in_namespace(namespace)
        return self.kube.list(API_VERSION, "ModelVersion", namespace)

    def dataset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Dataset as the operator's watch holds it, else read (as :meth:`model_versions`:
        a Dataset's change wakes the passes waiting on it after the watch has it)."""
        if self.datasets.active:
            return self.datasets.named(namespace, name)
        return self.kube.get(API_VERSION, "Dataset", namespace, name)

    def wrote(self, uid: str, resource_version: str, status: dict[str, Any]) -> None:
        if resource_version.isdigit():
            self._written[uid] = (int(resource_version), status)


def context(memo: Any) -> Context:
    ctx = memo.get("ctx")
    if not isinstance(ctx, Context):
        raise kopf.PermanentError("operator context missing (startup handler did not run)")
    return ctx


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A kopf Body (or any mapping) as nested plain dicts."""
    result: dict[str, Any] = json.loads(json.dumps(body, default=dict))
    return result


class Reconcile:
    """The status being computed for one object in one pass.

    Handlers set fields and conditions on it; :meth:`save` patches only the keys
    that differ from what is stored, so an unchanged object is never written.
    """

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._kopf_body = body if isinstance(body, kopf.Body) else kopf.Body(dict(body))  # type: ignore[arg-type]
        self.body = plain(body)
        self.stored: dict[str, Any] = dict(self.body.get("status") or {})
        self.status: dict[str, Any] = dict(self.stored)
        self.generation: int = int(self.body["metadata"].get("generation") or 0)
        self.status["observedGeneration"] = self.generation

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    def condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        value = "Unknown" if status is None else ("True" if status else "False")
        self.status["conditions"] = set_condition(
            list(self.status.get("conditions") or []),
            type_,
            value,  # type: ignore[arg-type]
            reason,
            message,
            self.generation,
        )

    def ready(self, status: bool | None, reason: str, message: str = "") -> None:
        """Set the ``Ready`` condition every kind carries."""
        self.condition(READY, status, reason, message)

    def info(self, reason: str, message: str) -> None:
        """A Normal Event on the object (posted whatever kopf's own log-posting level)."""
        kopf.event(self._kopf_body, type="Normal", reason=reason, message=message)

    def warn(self, reason: str, message: str) -> None:
        """A Warning Event on the object."""
        kopf.event(self._kopf_body, type="Warning", reason=reason, message=message)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.status.items() if self.stored.get(k) != v}

    def save(self, ctx: Context, kind: str) -> None:
        """Merge-patch the changed keys into the stored status, only when there are any."""
        changes = self.changes()
        if not changes:
            return
        patched = ctx.kube.patch_status(kind, self.namespace, self.name, changes)
        status = {k: v for k, v in self.status.items() if v is not None}
        meta = self.body["metadata"]
        ctx.wrote(meta["uid"], str(patched["metadata"].get("resourceVersion") or ""), status)


M = TypeVar("M", bound=KubeModel)


def parse_spec(model: type[M], rec: Reconcile) -> M:
    """The typed spec, or ``Ready=False, reason=InvalidSpec`` and a permanent error."""
    try:
        return model.model_validate(rec.body.get("spec") or {})
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        rec.ready(False, "InvalidSpec", message)
        raise InvalidSpecError(message) from exc


class InvalidSpecError(Exception):
    """The spec passed the API server's schema but cannot be acted on."""


Step = Callable[[Context, Reconcile], None]


def run_reconcile(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    step: Step,
) -> None:
    """Run one reconcile pass with the error taxonomy applied and status written once.

    ``step(ctx, rec)`` does the work and may raise :class:`InvalidSpecError`
    (reported, not retried) or :class:`kopf.TemporaryError` (retried later). Status is
    written by the pass itself, under the object's lock (not through kopf's ``patch``,
    which kopf would send after the lock is released), so an event-driven pass
    (:func:`reconcile_now`) never starts from a status older than the last write.
    """
    ctx = context(memo)
    with retry_soon_when_unavailable(ctx.settings), ctx.locked(body["metadata"]["uid"]):
        drop_old_bookkeeping(ctx, kind, body)
        _pass(ctx, kind, plain(body), step)


def drop_old_bookkeeping(ctx: Context, kind: str, body: Mapping[str, Any]) -> None:
    """Take kopf's annotations of the old prefix off an object made by an earlier operator
    (one patch, once), so its ``kubeloop.io/`` requests wake its handlers again."""
    meta = body["metadata"]
    stale = {key: None for key in OLD_BOOKKEEPING if key in (meta.get("annotations") or {})}
    if stale:
        ctx.kube.patch_metadata(
            API_VERSION, kind, meta["namespace"], meta["name"], {"annotations": stale}
        )


@contextmanager
def retry_soon_when_unavailable(settings: OperatorSettings) -> Iterator[None]:
    """An API server that cannot be reached or is not serving yet (restarting, say) raises
    a :class:`kopf.TemporaryError` retried within seconds. kopf would wait 60 s after any
    other error: every timer that fired while the API server was down would then leave
    its object alone for a minute after the API server was back."""
    try:
        yield
    except Exception as exc:
        if not unavailable(exc):
            raise
        delay = min(settings.resync_seconds, API_RETRY_SECONDS)
        raise kopf.TemporaryError(f"the API server is unavailable: {exc}", delay=delay) from exc


def reconcile_now(kind: str, body: dict[str, Any], ctx: Context, step: Step) -> None:
    """A pass driven by an event (a child changed): as :func:`run_reconcile`, but errors
    are logged, not raised (the safety resync retries), and a pass already waiting for
    the object's lock absorbs this wake-up."""
    uid = str(body["metadata"]["uid"])
    if not ctx.claim(uid):
        return
    try:
        with retry_soon_when_unavailable(ctx.settings), ctx.locked(uid):
            ctx.release(uid)
            _pass(ctx, kind, body, step)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        log.info("%s %s: %s", kind, body["metadata"].get("name"), exc)
    except Exception:
        log.exception("%s %s: event-driven reconcile failed", kind, body["metadata"].get("name"))


def _pass(ctx: Context, kind: str, body: dict[str, Any], step: Step) -> None:
    """One pass on the freshest body known, status saved whatever happened."""
    rec = Reconcile(ctx.current(body))
    started = time.perf_counter()
    result = "ok"
    try:
        step(ctx, rec)
    except InvalidSpecError as exc:
        result = "invalid"
        raise kopf.PermanentError(str(exc)) from exc
    except kopf.TemporaryError:
        result = "retry"
        raise
    except Exception:
        result = "error"
        raise
    finally:
        rec.save(ctx, kind)
        metrics.RECONCILES.labels(kind=kind, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)


def of_model(versions: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The ModelVersions of ``model``, however they were created: selected by
    ``spec.modelName`` (hand-made versions carry no labels)."""
    return [mv for mv in versions if mv.get("spec", {}).get("modelName") == model]


def versions_of(kube: Kube, namespace: str, model: str) -> list[dict[str, Any]]:
    """Every ModelVersion of ``model`` in the namespace, listed from the API server."""
    return of_model(kube.list(API_VERSION, "ModelVersion", namespace), model)
