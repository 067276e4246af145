"""Follow the routing ConfigMap through the Kubernetes API, so a weight change reaches
the pod in about a second instead of at the kubelet's next sync of the mounted file
(one minute by default).

The pod's own ServiceAccount token (mounted only on stable pods) may read just this one
ConfigMap: a Role scoped by ``resourceNames`` allows get/list/watch on it and nothing
else. The watch is a plain streaming GET (``?watch=1&fieldSelector=metadata.name=...``)
with httpx, so the serving image carries no Kubernetes client. It resumes from the
last ``resourceVersion`` (bookmarks keep it fresh), relists after ``410 Gone``, and
reconnects with a bounded backoff; the token file is re-read on each connect (the
kubelet rotates it).

What an event means is decided by :func:`step` (pure); :class:`ConfigMapWatch` only
moves bytes. A ConfigMap whose routing does not parse is reported and ignored: the last
good routing stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from kubeloop.contracts.routing import ROUTING_FILE, RoutingConfig, parse_routing

log = logging.getLogger("kubeloop.serving.kubewatch")

#: where the kubelet mounts a pod's ServiceAccount credentials
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: the server ends a watch after this long (a new one starts at once, from where it was)
WATCH_SECONDS = 240


@dataclass(frozen=True)
class Target:
    """Which ConfigMap to follow, on which API server, with which credentials."""

    api_url: str
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | None = None
    watch_seconds: int = WATCH_SECONDS

    def path(self) -> str:
        return f"{self.api_url.rstrip('/')}/api/v1/namespaces/{self.namespace}/configmaps"

    def params(self, resource_version: str | None) -> dict[str, str]:
        """The query of a list (``resource_version`` None) or of a watch from it."""
        params = {"fieldSelector": f"metadata.name={self.name}"}
        if resource_version is not None:
            params |= {
                "watch": "1",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(self.watch_seconds),
            }
        return params


def in_cluster_url(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The API server's URL from the variables the kubelet sets in every pod."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


def routing_of(configmap: dict[str, Any]) -> RoutingConfig:
    """The routing a ConfigMap holds; ValueError when it holds none that parses."""
    data = configmap.get("data") or {}
    raw = data.get(ROUTING_FILE)
    if not isinstance(raw, str):
        raise ValueError(f"no {ROUTING_FILE} key")
    return parse_routing(raw)


@dataclass(frozen=True)
class Step:
    """What one watch event asks for: resume from ``resource_version`` (None: relist),
    apply ``config`` when set, report ``error`` when set."""

    resource_version: str | None
    config: RoutingConfig | None = None
    error: str | None = None


def step(event: dict[str, Any], resource_version: str | None) -> Step:
    """Decide what a watch event means (pure: no I/O, no clock)."""
    kind, obj = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        # 410 Gone: the resourceVersion is too old; relist. Anything else: relist too.
        return Step(None, error=f"watch error {obj.get('code')}: {obj.get('message')}")
    version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
    if kind == "BOOKMARK" or kind == "DELETED":
        # a deleted ConfigMap says nothing new: keep routing by the last good one
        return Step(version)
    if kind not in ("ADDED", "MODIFIED"):
        return Step(version, error=f"unknown watch event {kind!r}")
    try:
        return Step(version, config=routing_of(obj))
    except ValueError as exc:
        name = (obj.get("metadata") or {}).get("name")
        return Step(version, error=f"ConfigMap {name} rejected, keeping the routing: {exc}")


def backoff(failures: int, first: float = 0.2, most: float = 5.0) -> float:
    """Seconds to wait before reconnect number ``failures`` (doubling, bounded)."""
    return float(min(most, first * 2 ** max(0, failures - 1)))


class ConfigMapWatch:
    """Keeps calling ``apply`` with the routing of one ConfigMap, until cancelled.

    ``live`` is told True once a list succeeded (the API is the source from then on) and
    False when the connection is lost (the mounted file is the fallback meanwhile)."""

    def __init__(
        self,
        target: Target,
        apply: Callable[[RoutingConfig], None],
        live: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.target = target
        self._apply = apply
        self._live = live
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(target.ca_file)) if target.ca_file else True
        )

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                async with self._client() as client:
                    if version is None:
                        version = await self._list(client)
                        self._live(True)
                    failures = 0
                    version = await self._watch(client, version)
                    log.info("routing watch: ended by the server; resuming from %s", version)
            except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                failures += 1
                version = None  # relist: a change may have been missed meanwhile
                self._live(False)
                wait = backoff(failures)
                log.warning("routing watch: %s; again in %.1fs", exc, wait)
                await asyncio.sleep(wait)

    def _client(self) -> httpx.AsyncClient:
        token = self.target.token_file.read_text().strip()
        return httpx.AsyncClient(
            verify=self._verify,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=self.target.watch_seconds + 30.0),
        )

    async def _list(self, client: httpx.AsyncClient) -> str:
        """Apply the ConfigMap as it is now; return the list's resourceVersion."""
        resp = await client.get(self.target.path(), params=self.target.params(None))
        resp.raise_for_status()
        doc = orjson.loads(resp.content)
        for item in doc.get("items") or []:
            self._handle(step({"type": "ADDED", "object": item}, None))
        return str(doc["metadata"]["resourceVersion"])

    async def _watch(self, client: httpx.AsyncClient, version: str) -> str | None:
        """Stream events from ``version``; return where to resume (None: relist)."""
        params = self.target.params(version)
        async with client.stream("GET", self.target.path(), params=params) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                decided = step(orjson.loads(line), version)
                self._handle(decided)
                if decided.resource_version is None:
                    return None
                version = decided.resource_version
        return version

    def _handle(self, decided: Step) -> None:
        if decided.error is not None:
            log.error("routing watch: %s", decided.error)
        if decided.config is not None:
            self._apply(decided.config)
