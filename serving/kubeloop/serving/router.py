"""Canary routing over HTTP: forward a share of inference requests to a canary server
and relay its answer, or mirror them (shadow) and compare its predictions with ours.

A forwarded request the canary fails (5xx, connection error, timeout) is answered by
the stable model instead: the client is not hurt, and the failure is counted under the
canary's version, where the canary analysis reads it. A canary 4xx is relayed (the
request was at fault, not the canary), except 404: only requests for the model the
stable serves are forwarded, so a canary that does not know it is failing, or the
request reached something else (a Service address not programmed yet, a name the
cluster DNS did not know yet and an upstream resolver answered).

What share goes where is :mod:`kubeloop.serving.canary`'s (config, exact split, the
watched routing file); this module moves the bytes and counts the outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from kubeloop.contracts.routing import RoutingConfig
from kubeloop.serving.canary import ConfigWatcher, Splitter, watch
from kubeloop.serving.kubewatch import SA_DIR, ConfigMapWatch, Target, in_cluster_url
from kubeloop.serving.metrics import Metrics
from kubeloop.serving.model import LoadedModel
from kubeloop.serving.rest.reply import JSON, Reply
from kubeloop.serving.rest.v1 import PREDICTIONS_FIELD
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.slot import ModelSlot
from kubeloop.serving.tls import CanaryTrust, in_background, poll_every

log = logging.getLogger("kubeloop.serving")

VARIANT = b"x-kubeloop-variant"
#: request headers sent on to the canary, and response headers relayed back
RELAYED_HEADERS = ("content-type", "inference-header-content-length", "x-request-id")
_RELAYED = tuple(h.encode() for h in RELAYED_HEADERS)
#: what became of a forwarded request (the ``outcome`` label of kubeloop_canary_requests)
FORWARD_OUTCOMES = ("ok", "client_error", "server_error", "unreachable")


class Router:
    """Sends requests to the canary (forward or shadow) by the current canary config."""

    def __init__(self, settings: ServingSettings, metrics: Metrics, slot: ModelSlot) -> None:
        self.settings = settings
        self._metrics = metrics
        self._slot = slot
        self.config = RoutingConfig(
            url=settings.canary_url,
            weight=settings.canary_weight,
            shadow=settings.canary_shadow,
            canary_version=settings.canary_version,
        )
        self._forward_split = Splitter(0.0 if settings.canary_shadow else settings.canary_weight)
        self._shadow_split = Splitter(0.0)
        #: forwarding / mirroring is on: check these before calling :meth:`to_canary` or
        #: :meth:`mirror` (attributes cost less than calls on the hot path)
        self.forwarding = self._forward_split.weight > 0
        self.shadowing = False
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._api_watcher: asyncio.Task[None] | None = None
        self._trust_watcher: asyncio.Task[None] | None = None
        #: the routing ConfigMap is followed through the API right now: the mounted
        #: file (which lags by the kubelet's sync period) is then not applied
        self._api_live = False
        self._applied = False
        #: the sticky header as the transports see it (lower-case bytes), or None
        self.sticky_key: bytes | None = None
        self._shadow_in_flight = 0
        self._shadow_agree: dict[str, int] = {}
        self._shadow_total: dict[str, int] = {}
        #: the canary's version label (the routing config's canary_version)
        self._version = version_label(self.config)
        #: where mirrored requests go and the version they are compared under: the canary
        #: (shadow mode) or a shadow server of its own beside the canary forward
        self._mirror_url: str | None = None
        self._mirror_version = self._version

    def start(self) -> None:
        """Open the client, apply the static config, then the routing file's (watched)."""
        trust = CanaryTrust.of(self.settings)
        if trust.watched is not None:
            interval = self.settings.tls_reload_interval
            self._trust_watcher = in_background(poll_every(interval, trust.watched.poll))
        self._client = httpx.AsyncClient(
            verify=trust.verify,
            timeout=self.settings.canary_timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.apply(self.config)
        loop = asyncio.get_running_loop()
        if self.settings.routing_file:
            watcher = ConfigWatcher(Path(self.settings.routing_file))
            first = watcher.poll()
            if first is not None:
                self.apply(first)
            interval = self.settings.config_poll_interval
            self._watcher = loop.create_task(watch(watcher, interval, self._apply_file))
        target = api_target(self.settings)
        if target is not None:
            follow = ConfigMapWatch(target, self.apply, self._set_live)
            self._api_watcher = loop.create_task(follow.run())

    def _set_live(self, live: bool) -> None:
        if live != self._api_live:
            log.info("routing: following ConfigMap through the API: %s", live)
        self._api_live = live

    def _apply_file(self, config: RoutingConfig) -> None:
        """The mounted file's change: applied unless the API watch is the source."""
        if not self._api_live:
            self.apply(config)

    async def stop(self) -> None:
        for task in (self._watcher, self._api_watcher, self._trust_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._client is not None:
            await self._client.aclose()

    def apply(self, config: RoutingConfig) -> None:
        """Route by ``config`` from now on (the same config again changes nothing)."""
        if self._applied and config == self.config:
            return
        self._applied = True
        self.config = config
        self.sticky_key = config.sticky_header.lower().encode() if config.sticky_header else None
        self._version = version_label(config)
        weight = config.weight if config.active else 0.0
        forward, shadow = (0.0, weight) if config.shadow else (weight, 0.0)
        self._mirror_url, self._mirror_version = config.url, self._version
        if config.shadow_url is not None and config.shadow_weight > 0:
            shadow = config.shadow_weight  # its own upstream: the canary forward goes on
            self._mirror_url = config.shadow_url
            self._mirror_version = version_label(config, config.shadow_version)
        self._forward_split.set_weight(forward)
        self._shadow_split = Splitter(shadow)
        self.forwarding, self.shadowing = forward > 0, shadow > 0
        name = self._slot.name
        self._metrics.canary_weight.labels(name, "forward").set(forward)
        self._metrics.canary_weight.labels(name, "shadow").set(shadow)
        if forward > 0:
            self._zero_outcomes("forward")
        log.info(
            "canary: %s version %s weight %s%s",
            config.url or "none",
            self._version,
            config.weight,
            " (shadow)" if config.shadow else "",
        )

    def _zero_outcomes(self, mode: str) -> None:
        """Export every outcome of this canary version at 0 before its first request:
        ``rate()`` skips a counter's first sample, so a failure that creates its series
        would go unseen by the analysis."""
        for outcome in FORWARD_OUTCOMES:
            self._metrics.canary.labels(self._slot.name, self._version, mode, outcome)

    def to_canary(self, sticky: bytes | None = None) -> bool:
        """Whether this request is the canary's: the exact forward share, or by the hash
        of ``sticky`` (the sticky header's value) when the request has one."""
        return self._forward_split.pick(sticky)

    @property
    def canary_version(self) -> str:
        """The canary's version label: what a relayed answer is counted under."""
        return self._version

    async def forward(self, path: str, body: bytes, headers: Mapping[bytes, bytes]) -> Reply | None:
        """Send the request to the canary and return its answer to relay; None when the
        stable model must answer instead (the canary unreachable or failing with a 5xx)."""
        url, version = self.config.url, self._version  # as they were when it was sent
        client = self._client
        if url is None or client is None:
            return None
        sent = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items() if k in _RELAYED
        }
        try:
            resp = await client.post(url.rstrip("/") + path, content=body, headers=sent)
        except httpx.HTTPError as exc:
            self._count("forward", "unreachable", version)
            log.warning("canary %s unreachable, stable answers: %s", url, exc)
            return None
        outcome = status_outcome(resp.status_code)
        self._count("forward", outcome, version)
        if outcome == "server_error":
            log.warning("canary %s answered %s, stable answers", url, resp.status_code)
            return None
        out = [(VARIANT, b"canary")]
        for key in RELAYED_HEADERS:
            value = resp.headers.get(key)
            if value is not None:
                out.append((key.encode(), value.encode("latin-1")))
        return Reply(resp.status_code, resp.content, out)

    def mirror(
        self, model: LoadedModel, path: str, body: bytes, labels: np.ndarray[Any, Any]
    ) -> None:
        """Mirror the shadow share of requests to the canary, in the background and
        bounded; ``labels`` is our prediction, compared with the canary's."""
        if not self._shadow_split.pick():
            return
        if self._shadow_in_flight >= self.settings.shadow_max_in_flight:
            self._count("shadow", "skipped", self._mirror_version)
            return
        self._shadow_in_flight += 1
        task = asyncio.get_running_loop().create_task(self._mirror(model, path, body, labels))
        task.add_done_callback(self._mirrored)

    def _mirrored(self, _: asyncio.Task[None]) -> None:
        self._shadow_in_flight -= 1

    async def _mirror(
        self, model: LoadedModel, path: str, body: bytes, labels: np.ndarray[Any, Any]
    ) -> None:
        url, version = self._mirror_url, self._mirror_version  # as they were when sent
        client = self._client
        if url is None or client is None:
            return
        # the mirror asks for plain JSON so the prediction can be compared
        try:
            resp = await client.post(
                url.rstrip("/") + path, content=body, headers={"content-type": JSON.decode()}
            )
        except httpx.HTTPError:
            self._count("shadow", "unreachable", version)
            return
        if resp.status_code >= 400:
            self._count("shadow", status_outcome(resp.status_code), version)
            return
        self._count("shadow", "ok", version)
        try:
            theirs = prediction_of(orjson.loads(resp.content), model.label_output)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self._compared(version, "unreadable")
            return
        agree = agrees(model.task, labels.reshape(-1).tolist(), theirs)
        total = self._shadow_total[version] = self._shadow_total.get(version, 0) + 1
        agreed = self._shadow_agree[version] = self._shadow_agree.get(version, 0) + int(agree)
        self._compared(version, "agree" if agree else "disagree")
        self._metrics.shadow_agreement.labels(self._slot.name, version).set(agreed / total)

    def _count(self, mode: str, outcome: str, version: str | None = None) -> None:
        labels = (self._slot.name, version or self._version, mode, outcome)
        self._metrics.canary.labels(*labels).inc()

    def _compared(self, version: str, result: str) -> None:
        self._metrics.shadow_compared.labels(self._slot.name, version, result).inc()


def api_target(settings: ServingSettings) -> Target | None:
    """Where to follow the routing ConfigMap through the API; None when not asked to (or
    when no API server is known: then the mounted file alone routes)."""
    name = settings.routing_configmap
    if name is None:
        return None
    url = settings.kube_api_url or in_cluster_url()
    namespace = settings.routing_namespace or _own_namespace()
    if url is None or namespace is None:
        log.warning("routing ConfigMap %s: no API server or namespace known; file only", name)
        return None
    ca = settings.kube_ca_file
    ca_path = Path(ca) if ca and Path(ca).exists() else None
    token = Path(settings.kube_token_file)
    return Target(url, namespace, name, token, ca_path, settings.routing_watch_seconds)


def _own_namespace() -> str | None:
    try:
        return (SA_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None


def version_label(config: RoutingConfig, version: int | str | None = None) -> str:
    """The canary's version (or ``version``, when given) as a label value (``unknown``
    when the config names none)."""
    version = config.canary_version if version is None else version
    return "unknown" if version is None or version == "" else str(version)


def status_outcome(status: int) -> str:
    """The outcome label of a canary answer with HTTP ``status``: ``ok`` below 400,
    ``client_error`` for a 4xx (the request's fault), ``server_error`` otherwise, and
    for a 404 (the stable knows the model the request names: see the module's doc)."""
    if status < 400:
        return "ok"
    return "client_error" if status < 500 and status != 404 else "server_error"


def prediction_of(doc: Any, output: str) -> list[Any]:
    """The predictions in a V1 (``predictions``) or V2 (the ``output`` tensor) answer."""
    if PREDICTIONS_FIELD in doc:
        return list(doc[PREDICTIONS_FIELD])
    for out in doc["outputs"]:
        if out["name"] == output:
            return list(out["data"])
    raise KeyError(output)


def agrees(task: str, mine: list[Any], theirs: list[Any]) -> bool:
    """Same classes (compared as text), or the same values within float tolerance."""
    if task == "classification":
        return [str(a) for a in mine] == [str(b) for b in theirs]
    return len(mine) == len(theirs) and bool(
        np.allclose(np.asarray(mine, float), np.asarray(theirs, float), rtol=1e-5, atol=1e-6)
    )
