"""What every handler shares: the context, one reconcile pass and its status writes."""

from __future__ import annotations

import json
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
from kubeloop.operator.conditions import set_condition
from kubeloop.operator.kube import Kube
from kubeloop.operator.settings import OperatorSettings

#: The settings the kopf decorators need when a handler module is imported (timer
#: intervals), before the startup handler has built the :class:`Context`.
IMPORT_SETTINGS = OperatorSettings()


@dataclass
class Context:
    """Long-lived state shared by the handlers (kept in kopf's ``memo``)."""

    settings: OperatorSettings
    kube: Kube
    _locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def locked(self, uid: str) -> Iterator[None]:
        """Serialise reconciles of one object (a timer and a change handler may overlap)."""
        with self._guard:
            lock = self._locks[uid]
        with lock:
            yield


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

    Handlers set fields and conditions on it; :meth:`write` puts only the keys
    that differ from what is stored into kopf's status patch, so an unchanged
    object is never written.
    """

    def __init__(self, body: kopf.Body) -> None:
        self._kopf_body = body
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

    def write(self, patch: kopf.Patch) -> None:
        for key, value in self.changes().items():
            patch.status[key] = value


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


def run_reconcile(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    step: Callable[[Context, Reconcile], None],
) -> None:
    """Run one reconcile pass with the error taxonomy applied and status written once.

    ``step(ctx, rec)`` does the work and may raise :class:`InvalidSpecError`
    (reported, not retried) or :class:`kopf.TemporaryError` (retried later).
    """
    ctx = context(memo)
    rec = Reconcile(body)
    started = time.perf_counter()
    result = "ok"
    try:
        with ctx.locked(rec.body["metadata"]["uid"]):
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
        rec.write(patch)
        metrics.RECONCILES.labels(kind=kind, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)


def versions_of(kube: Kube, namespace: str, model: str) -> list[dict[str, Any]]:
    """Every ModelVersion of ``model`` in the namespace, however it was created.

    Selected by ``spec.modelName`` (hand-made versions carry no labels).
    """
    return [
        mv
        for mv in kube.list(API_VERSION, "ModelVersion", namespace)
        if mv.get("spec", {}).get("modelName") == model
    ]
