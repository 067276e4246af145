"""``kubeloop serve``: run the inference server."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import click
import uvicorn
from pydantic import ValidationError

from kubeloop.serving.auth import TokenFileError, WriteGuard
from kubeloop.serving.limits import ENV_PREFIX
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tls import ssl_options

log = logging.getLogger("kubeloop.serving")


#: seconds before the shutdown deadline at which the watchdog ends the process
WATCHDOG_MARGIN_S = 0.2


def connection_timeout(shutdown_timeout: float) -> int:
    """Seconds in-flight requests get once the server stops accepting: the shutdown
    budget less a reserve (up to 5 s, at most half) for the sinks to flush and exit."""
    return max(0, math.floor(shutdown_timeout - min(5.0, shutdown_timeout / 2)))


class GracefulServer(uvicorn.Server):
    """SIGTERM/SIGINT: report not ready, keep serving ``drain_seconds`` (so the
    endpoints controller removes the pod), then stop accepting, let in-flight
    requests finish and exit. A second signal exits at once. Whatever happens (a
    stalled sink, a stuck request), the process is gone ``drain_seconds +
    shutdown_timeout`` after the first signal: a watchdog ends it then."""

    def __init__(
        self, config: uvicorn.Config, drain_seconds: float, shutdown_timeout: float = 30.0
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.shutdown_timeout = shutdown_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: exit now
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        budget = self.drain_seconds + self.shutdown_timeout
        watchdog(budget)
        app = self.config.loaded_app
        plane = getattr(_unwrap(app), "plane", None)
        if plane is not None:
            plane.begin_shutdown(time.monotonic() + budget)
        log.info(
            "signal %s: not ready; draining for %.1fs, then closing",
            signal.Signals(sig).name,
            self.drain_seconds,
        )
        # set should_exit directly (not via uvicorn's handler, which re-raises the
        # signal after shutdown): a drained shutdown exits 0
        if self.drain_seconds <= 0:
            self.should_exit = True
            return
        timer = threading.Timer(self.drain_seconds, setattr, args=(self, "should_exit", True))
        timer.daemon = True
        timer.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop the gRPC server (when there is one) alongside the HTTP connections, with
        the same grace, so the drain bound holds for both."""
        grpc = getattr(_unwrap(self.config.loaded_app), "grpc", None)
        if grpc is not None:
            grpc.begin_stop(connection_timeout(self.shutdown_timeout))
        await super().shutdown(sockets)


def watchdog(budget: float) -> None:
    """End the process (exit status 1) just before ``budget`` seconds from now."""
    timer = threading.Timer(max(0.0, budget - WATCHDOG_MARGIN_S), _exit_now, args=(budget,))
    timer.daemon = True
    timer.start()


def _exit_now(budget: float) -> None:
    # the reason is logged from its own thread: a stalled stderr must not keep us alive
    note = threading.Thread(
        target=log.error,
        args=("shutdown did not finish within %.1fs of the signal; exiting now", budget),
        daemon=True,
    )
    note.start()
    note.join(0.1)
    os._exit(1)


def _unwrap(app: Any) -> Any:
    # uvicorn wraps the app in its own middleware (proxy headers, ...)
    while app is not None and not hasattr(app, "plane") and hasattr(app, "app"):
        app = app.app
    return app


def _load_settings() -> ServingSettings:
    """The validated settings; an unusable token file fails here, before the server listens."""
    try:
        settings = ServingSettings()
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings:\n{exc}") from None
    try:
        WriteGuard.from_settings(settings)
    except TokenFileError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def _export(flags: dict[str, Any]) -> None:
    """Each flag given, as its KUBELOOP_SERVING_* variable (the settings read those)."""
    for key, value in flags.items():
        if value is not None:
            os.environ[ENV_PREFIX + key.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )


@click.command("serve")
@click.option(
    "--model", "model", required=True, help="Model directory or URI (file://, s3://, ...)."
)
@click.option("--name", default=None, help="Name to serve the model under (default: model.json's).")
@click.option("--host", default=None, help="Listen address [default: 0.0.0.0].")
@click.option("--port", type=int, default=None, help="Listen port [default: 8080].")
@click.option(
    "--grpc-port", type=int, default=None, help="Also serve OIP v2 over gRPC on this port."
)
@click.option("--workers", type=int, default=None, help="Worker processes [default: 1].")
@click.option("--canary-url", default=None, help="Forward a share of requests to this server.")
@click.option("--canary-weight", type=float, default=None, help="Percent sent to the canary.")
@click.option(
    "--routing-file", default=None, help="Watched JSON/YAML file {canary_url, weight, shadow}."
)
@click.option("--shadow/--no-shadow", default=None, help="Mirror to the canary instead.")
@click.option("--prediction-log", default=None, help="'-' for stdout, or a file path.")
@click.option(
    "--token-file", default=None, help="Bearer token file guarding feedback and load/unload."
)
def serve(
    model: str,
    name: str | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    canary_url: str | None,
    canary_weight: float | None,
    routing_file: str | None,
    shadow: bool | None,
    prediction_log: str | None,
    token_file: str | None,
) -> None:
    """Serve a model over the Open Inference Protocol v2 (REST, and gRPC with --grpc-port)
    and KServe V1.

    Every setting can also be given as a KUBELOOP_SERVING_* environment variable
    (see kubeloop.serving.settings); flags win.
    """
    flags: dict[str, Any] = {
        "model": model,
        "name": name,
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "canary_url": canary_url,
        "canary_weight": canary_weight,
        "routing_file": routing_file,
        "canary_shadow": shadow,
        "prediction_log": prediction_log,
        "token_file": token_file,
    }
    _export(flags)
    settings = _load_settings()
    config = uvicorn.Config(
        "kubeloop.serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=connection_timeout(settings.shutdown_timeout),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        proxy_headers=False,  # the server never uses the client address
        **ssl_options(settings),
    )
    server = GracefulServer(config, settings.drain_seconds, settings.shutdown_timeout)
    if settings.workers > 1:
        sock = config.bind_socket()
        # each worker runs a plain uvicorn server: SIGTERM drains without the not-ready delay
        uvicorn.supervisors.Multiprocess(config, sockets=[sock]).run()
    else:
        server.run()
