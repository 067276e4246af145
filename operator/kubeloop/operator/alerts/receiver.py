"""The Alertmanager webhook receiver: ``POST /v1/alerts`` with a version-4 payload.

Transport only: bearer-token auth (401), a body size limit (413), payload
validation (400 with the reason), then the alerts go to a ``process`` coroutine
(in the operator: the retrain policy, :func:`process_alerts`). A 5xx makes
Alertmanager retry the whole notification, which is safe because every
decision is idempotent.

The server runs on kopf's event loop, started by a startup handler
(:func:`start`) and stopped by a cleanup handler (:func:`stop`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from kubeloop.operator import metrics
from kubeloop.operator.alerts.payload import PayloadError, WebhookPayload, parse_payload
from kubeloop.operator.handlers.common import Context
from kubeloop.operator.settings import OperatorSettings

log = logging.getLogger("kubeloop.alerts")

PATH = "/v1/alerts"
HEALTH_PATH = "/healthz"
MEMO_KEY = "alert_receiver"

Process = Callable[[WebhookPayload], Awaitable[list[dict[str, Any]]]]


class TokenSource:
    """The expected bearer token: fixed, or read from a file (a mounted Secret).

    The file is re-read when its modification time changes, so a rotated Secret
    takes effect without a restart. An empty or unreadable file accepts no one.
    """

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        self._token = token or None
        self._path = path
        self._mtime: float | None = None
        self._file_token: str | None = None

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> TokenSource:
        token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
        return cls(token, settings.webhook_token_file)

    @property
    def configured(self) -> bool:
        return self._token is not None or self._path is not None

    def current(self) -> str | None:
        if self._path is None:
            return self._token
        try:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._file_token = self._path.read_text().strip() or None
                self._mtime = mtime
        except OSError:
            self._file_token, self._mtime = None, None
        return self._file_token

    def accepts(self, header: str | None) -> bool:
        expected = self.current()
        if expected is None or not header:
            return False
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), expected.encode())


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def make_app(tokens: TokenSource, process: Process, max_body_bytes: int) -> web.Application:
    """The receiver's aiohttp application."""

    async def receive(request: web.Request) -> web.Response:
        if not tokens.accepts(request.headers.get("Authorization")):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > max_body_bytes:
            return _error(413, f"body larger than {max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {max_body_bytes} bytes")
        try:
            payload = parse_payload(body)
        except PayloadError as exc:
            log.warning("rejected webhook payload: %s", exc)
            return _error(400, str(exc))
        try:
            results = await process(payload)
        except Exception as exc:  # Alertmanager retries on 5xx
            log.exception("processing %d alert(s) failed", len(payload.alerts))
            return _error(500, f"processing failed: {type(exc).__name__}: {exc}")
        return web.json_response({"results": results})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post(PATH, receive)
    app.router.add_get(HEALTH_PATH, health)
    return app


def watched(namespace: str, patterns: tuple[str, ...]) -> bool:
    """Whether this operator watches ``namespace`` (no patterns: every namespace)."""
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


async def process_alerts(
    ctx: Context, payload: WebhookPayload, namespaces: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Apply the retrain policy to each firing alert naming a ModelDeployment.

    ``namespaces`` are the operator's ``--namespace`` values (kopf globs allowed);
    a ModelDeployment elsewhere is not this operator's: ``unknown-deployment``.
    """
    from kubeloop.operator import retrain  # the policy imports kopf-side code

    results: list[dict[str, Any]] = []
    for alert in payload.alerts:
        metrics.ALERTS_RECEIVED.labels(status=alert.status).inc()
        target = alert.deployment
        where = "/".join(target) if target else "?"
        entry: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alert.name}
        if alert.status == "resolved":
            log.info(
                "alert %s for %s resolved (fingerprint %s)", alert.name, where, alert.fingerprint
            )
            results.append({**entry, "result": "resolved"})
            continue
        if target is None or not watched(target[0], namespaces):
            log.warning(
                "alert %s (fingerprint %s) names no ModelDeployment this operator watches "
                "(labels namespace and model_deployment: %s); acknowledged",
                alert.name,
                alert.fingerprint,
                where,
            )
            metrics.RETRAIN_DECISIONS.labels(decision="unknown-deployment", trigger="alert").inc()
            results.append({**entry, "result": "unknown-deployment"})
            continue
        verdict = await asyncio.to_thread(
            retrain.act, ctx, retrain.Trigger.from_alert(alert), target[0], target[1]
        )
        results.append(
            {**entry, "deployment": where, "result": verdict.decision, "message": verdict.message}
        )
    return results


async def start(ctx: Context, memo: Any) -> web.AppRunner | None:
    """Start the receiver when a port and a token are configured."""
    settings = ctx.settings
    if not settings.webhook_port:
        log.info("alert receiver disabled (webhook_port is 0)")
        return None
    tokens = TokenSource.from_settings(settings)
    if not tokens.configured:
        log.warning(
            "alert receiver not started: set KUBELOOP_WEBHOOK_TOKEN or KUBELOOP_WEBHOOK_TOKEN_FILE"
        )
        return None
    namespaces = tuple(memo.get("watched_namespaces") or ())
    process = partial(process_alerts, ctx, namespaces=namespaces)
    app = make_app(tokens, process, settings.webhook_max_body_bytes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.webhook_host, settings.webhook_port)
    await site.start()
    memo[MEMO_KEY] = runner
    log.info(
        "alert receiver listening on %s:%d%s",
        settings.webhook_host,
        settings.webhook_port,
        PATH,
    )
    return runner


async def stop(memo: Any) -> None:
    runner = memo.get(MEMO_KEY)
    if isinstance(runner, web.AppRunner):
        await runner.cleanup()
