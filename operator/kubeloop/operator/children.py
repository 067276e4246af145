"""What the operator knows of the children it applied, so an unchanged child costs no write.

A server-side apply of an unchanged object, or a DELETE answered 404, is still a write
the API server has to serve. :class:`AppliedCache` remembers, per child, the digest of
the manifest last applied and what the apply returned; the watches on the child kinds
(:mod:`kubeloop.operator.handlers.watch`) keep it true: any change made by someone else
(a different ``generation``, or for kinds without one a different ``resourceVersion``)
or a deletion forgets the entry, so the next reconcile applies again. It also knows which
children exist at all: a kopf index on each child kind records every one it sees, and kopf
runs no handler before every index has seen its initial listing, so a child missing from
that record does not exist and needs no DELETE (nor a GET). Only the kinds in
:data:`WATCHED` are cached: a change to any other kind would go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

#: The child kinds the operator watches (label ``app.kubernetes.io/managed-by=kubeloop``):
#: (group, version, plural, apiVersion, kind).
WATCHED: tuple[tuple[str, str, str, str, str], ...] = (
    ("batch", "v1", "jobs", "batch/v1", "Job"),
    ("batch", "v1", "cronjobs", "batch/v1", "CronJob"),
    ("apps", "v1", "deployments", "apps/v1", "Deployment"),
    ("", "v1", "services", "v1", "Service"),
    ("", "v1", "configmaps", "v1", "ConfigMap"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io", "v1", "networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
    # a deployment's router account: its stable pods read their routing ConfigMap with it
    ("", "v1", "serviceaccounts", "v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "roles", "rbac.authorization.k8s.io/v1", "Role"),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
    ),
)
CACHED_KINDS = frozenset((api_version, kind) for *_, api_version, kind in WATCHED)

Key = tuple[str, str, str, str]


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def digest(manifest: dict[str, Any]) -> str:
    """The digest of a manifest as the operator would apply it."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def version_token(obj: dict[str, Any]) -> str:
    """What changes when anyone changes the object's desired state: its ``generation``
    (not bumped by status or controller bookkeeping), else its ``resourceVersion``."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation else f"r{meta.get('resourceVersion')}"


@dataclass
class _Entry:
    digest: str | None  # None: known to be absent (deleted by the operator)
    token: str | None
    live: dict[str, Any] | None


class AppliedCache:
    """Per child: the digest last applied and the object as last seen (thread-safe)."""

    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}
        self._existing: set[Key] = set()
        self._lock = threading.Lock()

    def exists(self, key: Key) -> None:
        """A watch saw the child (or the operator made it)."""
        with self._lock:
            self._existing.add(key)

    def absent(self, key: Key) -> bool:
        """True when the child is known not to exist: a watched kind, never seen or since
        deleted (a deletion the operator made, or one a watch reported)."""
        if key[:2] not in CACHED_KINDS:
            return False
        with self._lock:
            entry = self._entries.get(key)
            return (entry is not None and entry.digest is None) or key not in self._existing

    def unchanged(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The live object when applying ``manifest`` would change nothing, else None."""
        if (manifest["apiVersion"], manifest["kind"]) not in CACHED_KINDS:
            return None
        with self._lock:
            entry = self._entries.get(key_of(manifest))
        if entry is None or entry.digest != digest(manifest):
            return None
        return entry.live

    def applied(self, manifest: dict[str, Any], live: dict[str, Any]) -> None:
        """Remember that ``manifest`` was applied and the API server returned ``live``."""
        if (manifest["apiVersion"], manifest["kind"]) in CACHED_KINDS:
            with self._lock:
                self._entries[key_of(manifest)] = _Entry(
                    digest(manifest), version_token(live), live
                )
                self._existing.add(key_of(manifest))

    def live(self, key: Key) -> tuple[bool, dict[str, Any] | None]:
        """(known, the object as last seen): known is False when only the API server can say."""
        if self.absent(key):
            return True, None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return False, None
        return True, entry.live

    def deleted(self, key: Key) -> None:
        """Remember that the operator deleted the child (or found it gone)."""
        if key[:2] in CACHED_KINDS:
            with self._lock:
                self._entries[key] = _Entry(None, None, None)
                self._existing.discard(key)

    def observe(self, event_type: str | None, obj: dict[str, Any]) -> bool:
        """Fold a watch event in; True when it shows a change the operator did not make
        (the entry is then forgotten, so the next reconcile applies or deletes again)."""
        key = key_of(obj)
        with self._lock:
            if event_type == "DELETED":
                self._existing.discard(key)
            entry = self._entries.get(key)
            if entry is None:
                return False
            if event_type == "DELETED":
                del self._entries[key]  # gone: nothing left to remember
                return entry.digest is not None
            if entry.digest is None or entry.token != version_token(obj):
                del self._entries[key]
                return True
            entry.live = obj
            return False


class Watched:
    """The objects of one kind as the operator's watch last saw them, by namespace and
    name (thread-safe): read by passes instead of a request per pass.

    Fed by a kopf index function (kopf runs no handler before every index has seen its
    initial listing, and updates indexes before it runs a change's handlers, so a pass
    woken by an object's change finds that change here) and by the kind's deletion
    events. ``active`` is False until the operator's startup turns it on: a
    :class:`~kubeloop.operator.handlers.common.Context` made elsewhere (a unit test, a
    command) has no watch behind it and asks the API server instead.
    """

    def __init__(self) -> None:
        self.active = False
        self._by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def seen(self, obj: dict[str, Any]) -> None:
        """Hold ``obj``, unless what is held is newer (a write's answer, recorded by the
        writer, can be ahead of its kind's watch)."""
        meta = obj["metadata"]
        with self._lock:
            held = self._by_namespace.setdefault(str(meta["namespace"]), {})
            known = held.get(str(meta["name"]))
            if known is None or not _older(obj, known):
                held[str(meta["name"])] = obj

    def gone(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._by_namespace.get(str(meta["namespace"]), {}).pop(str(meta["name"]), None)

    def in_namespace(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._by_namespace.get(namespace, {}).values())

    def named(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._by_namespace.get(namespace, {}).get(name)


def _older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``obj`` is an older state of the same object than ``than``: by uid and
    resourceVersion, compared as the integers etcd-backed API servers give."""
    a, b = obj["metadata"], than["metadata"]
    rv, held = str(a.get("resourceVersion") or ""), str(b.get("resourceVersion") or "")
    return a.get("uid") == b.get("uid") and rv.isdigit() and held.isdigit() and int(rv) < int(held)
