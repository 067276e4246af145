"""The ASGI entry point: a small front before the FastAPI application.

The front (:class:`ServingApp`) refuses a request at once when ``max_in_flight`` are
being served (503 with Retry-After; health, readiness and metrics are exempt), reads
every request body once, with its route's size limit (``max_feedback_bytes`` for
feedback, ``max_body_bytes`` for the rest; 413; the rest of an oversized body is read
and dropped, up to twice the limit, so that the connection stays usable), refuses a
feedback body over the byte budget before reading it (429), and — when
``fast_path`` is on — answers the two inference routes itself, calling the same
:class:`~kubeloop.serving.rest.inference.RestInference` the FastAPI routes call.
That skips the framework's per-request routing and dependency machinery (measured
at about 100 µs a request on this stack, more than the model call for small models).
All other routes, the OpenAPI document and the lifespan go through FastAPI
(:mod:`kubeloop.serving.rest.endpoints`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any

from kubeloop.serving.dataplane import DataPlane
from kubeloop.serving.errors import (
    PayloadTooLargeError,
    ServingError,
    TooManyRequestsError,
    UnavailableError,
)
from kubeloop.serving.limits import ENV_PREFIX
from kubeloop.serving.rest.endpoints import create_fastapi
from kubeloop.serving.rest.inference import V1, V2, RestInference
from kubeloop.serving.rest.reply import Reply, error_reply
from kubeloop.serving.settings import ServingSettings

if TYPE_CHECKING:
    from kubeloop.serving.grpc_v2.server import GrpcServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

V2_PREFIX, V2_SUFFIX = "/v2/models/", "/infer"
V1_PREFIX, V1_SUFFIX = "/v1/models/", ":predict"
FEEDBACK_SUFFIX = "/feedback"
READY_SUFFIX = "/ready"
#: paths never refused for load (``GET .../ready`` neither)
EXEMPT_PATHS = frozenset(("/v2/health/live", "/v2/health/ready", "/metrics"))
RETRY_AFTER = (b"retry-after", b"1")
#: A refused feedback body up to this size is read and dropped (the connection stays
#: usable); a larger one is not read, and the answer closes the connection.
DRAIN_REFUSED = 64 * 1024


class ServingApp:
    """The ASGI entry point: the in-flight and body limits, the inference fast path,
    then FastAPI."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.plane = DataPlane(settings)
        self.inference = RestInference(self.plane)
        #: the gRPC service on its own port, when one is set (it shares ``in_flight``)
        self.grpc = None if settings.grpc_port is None else _grpc_server(self, settings)
        self.fastapi = create_fastapi(self.plane, self.inference, [self.grpc] if self.grpc else [])
        self.fast_path = settings.fast_path
        self.max_body = settings.max_body_bytes
        self.max_feedback = settings.max_feedback_bytes
        self.max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self.plane.metrics.in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _exempt(scope):
            await self.fastapi(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await self._reject(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await self.fastapi(scope, receive, send)
            return
        limit, variable = self._body_limit(scope)
        refused = self._over_feedback_budget(scope, limit)
        if refused is not None:
            kept = _declared_length(scope) <= DRAIN_REFUSED and await self._drain(
                scope, receive, DRAIN_REFUSED
            )
            await _send(send, error_reply(refused), close=not kept)
            return
        try:
            body = await self._read_body(scope, receive, limit, variable)
        except _OversizedError as exc:
            kept = exc.ended or await self._drain(scope, receive, limit)
            await _send(send, error_reply(exc.error), close=not kept)
            return
        except _DisconnectedError:
            return
        if _is_feedback(scope) and not _declared_length(scope):
            self.plane.feedback.spend(len(body))  # admitted before its length was known
        call = self._fast(scope, body) if self.fast_path else None
        if call is None:
            await self.fastapi(scope, _replay(body), send)
            return
        try:
            reply = await call
        except Exception as exc:
            reply = error_reply(exc)
        await _send(send, reply)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        """503 with Retry-After: ``max_in_flight`` requests are being served. A body is
        read and dropped first (within twice its route's limit) so the connection stays
        usable."""
        self.plane.metrics.rejected.inc()
        kept = await self._drain(scope, receive, self._body_limit(scope)[0])
        error = UnavailableError(
            f"{self.max_in_flight} requests are being served, the most allowed "
            f"({ENV_PREFIX}MAX_IN_FLIGHT); retry shortly"
        )
        reply = error_reply(error)
        await _send(send, reply._replace(headers=[*reply.headers, RETRY_AFTER]), close=not kept)

    def _over_feedback_budget(self, scope: Scope, limit: int) -> TooManyRequestsError | None:
        """The 429 for a feedback body over the byte budget, decided before it is read:
        reading a refused megabyte costs the event loop what accepting it would. Requests
        the token check refuses are left to the route (401/403) and spend nothing, and so
        do bodies declared over their limit (413); one of unknown length is let in while
        the budget is not in debt, and charged once read."""
        declared = _declared_length(scope)
        if not _is_feedback(scope) or declared > limit:
            return None
        try:
            self.plane.guard.check(dict(scope["headers"]))
            self.plane.feedback.admit(declared)
        except TooManyRequestsError as exc:
            return exc
        except ServingError:
            return None
        return None

    def _body_limit(self, scope: Scope) -> tuple[int, str]:
        """The largest body the request's route takes, and that setting's name."""
        if _is_feedback(scope):
            return self.max_feedback, "MAX_FEEDBACK_BYTES"
        return self.max_body, "MAX_BODY_BYTES"

    def _fast(self, scope: Scope, body: bytes) -> Coroutine[Any, Any, Reply] | None:
        """The inference call for the two inference routes (None for other paths)."""
        path: str = scope["path"]
        if path.startswith(V2_PREFIX) and path.endswith(V2_SUFFIX):
            name = path[len(V2_PREFIX) : -len(V2_SUFFIX)]
            version: str | None = None
            if "/versions/" in name:
                name, version = name.split("/versions/", 1)
            if not name or "/" in name or (version is not None and (not version or "/" in version)):
                return None
            return self.inference.infer(V2, name, version, body, dict(scope["headers"]), path)
        if path.startswith(V1_PREFIX) and path.endswith(V1_SUFFIX):
            name = path[len(V1_PREFIX) : -len(V1_SUFFIX)]
            if not name or "/" in name:
                return None
            return self.inference.infer(V1, name, None, body, dict(scope["headers"]), path)
        return None

    async def _read_body(self, scope: Scope, receive: Receive, limit: int, variable: str) -> bytes:
        declared = _declared_length(scope)
        if declared > limit:
            raise _OversizedError(
                f"request body of {declared} bytes is over the limit of {limit} bytes "
                f"({ENV_PREFIX}{variable})",
                ended=False,
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _DisconnectedError
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _OversizedError(
                        f"request body is over the limit of {limit} bytes ({ENV_PREFIX}{variable})",
                        ended=not message.get("more_body", False),
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(self, scope: Scope, receive: Receive, limit: int) -> bool:
        """Read and drop the rest of a body (one over ``limit``, or one refused), so that
        the connection can serve the next request: True when it ended within twice
        ``limit`` (beyond that the connection is closed, which stops the upload)."""
        budget = 2 * limit
        if _declared_length(scope) > 2 * budget:
            return False
        while budget >= 0:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return budget >= 0
        return False


def _grpc_server(app: ServingApp, settings: ServingSettings) -> GrpcServer:
    # imported only when gRPC is on: the generated modules register the protobuf package
    # `inference` process-wide (as tritonclient.grpc's do), and a server without gRPC
    # need not load grpcio at all
    from kubeloop.serving.grpc_v2.server import GrpcServer

    return GrpcServer(app.plane, app, settings)


def _exempt(scope: Scope) -> bool:
    """Health, readiness and metrics: answered whatever the load (never refused, not
    counted in flight), so probes and scrapes see the server as it is."""
    path: str = scope["path"]
    return path in EXEMPT_PATHS or (scope["method"] == "GET" and path.endswith(READY_SUFFIX))


def _is_feedback(scope: Scope) -> bool:
    path: str = scope["path"]
    return path.startswith(V2_PREFIX) and path.endswith(FEEDBACK_SUFFIX)


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length (0 when absent or not a number)."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class _DisconnectedError(Exception):
    pass


class _OversizedError(Exception):
    """A body over its limit; ``ended`` when its last part was read already (then there
    is nothing left to drain)."""

    def __init__(self, message: str, *, ended: bool) -> None:
        super().__init__(message)
        self.error = PayloadTooLargeError(message)
        self.ended = ended


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send(send: Send, reply: Reply, *, close: bool = False) -> None:
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def create_app() -> ServingApp:
    """Factory for uvicorn: settings from the environment (set by ``kubeloop serve``)."""
    settings = ServingSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # a worker thread busy in Python (feedback decoding, the prediction log writer) holds
    # the interpreter this long before the event loop gets it back
    sys.setswitchinterval(settings.thread_switch_ms / 1000)
    return ServingApp(settings)
