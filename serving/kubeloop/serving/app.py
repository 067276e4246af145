"""The ASGI entry point: a small front before the FastAPI application.

The front (:class:`ServingApp`) reads every request body once, with the size
limit (413; the rest of an oversized body is read and dropped, up to twice the limit,
so that the connection stays usable), and — when ``fast_path`` is on — answers the
two inference routes itself, calling the same
:class:`~kubeloop.serving.rest.inference.RestInference` the FastAPI routes call.
That skips the framework's per-request routing and dependency machinery (measured
at about 100 µs a request on this stack, more than the model call for small models).
All other routes, the OpenAPI document and the lifespan go through FastAPI
(:mod:`kubeloop.serving.rest.endpoints`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from kubeloop.serving.dataplane import DataPlane
from kubeloop.serving.errors import PayloadTooLargeError
from kubeloop.serving.rest.endpoints import create_fastapi
from kubeloop.serving.rest.inference import V1, V2, RestInference
from kubeloop.serving.rest.reply import Reply, error_reply
from kubeloop.serving.settings import ServingSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

V2_PREFIX, V2_SUFFIX = "/v2/models/", "/infer"
V1_PREFIX, V1_SUFFIX = "/v1/models/", ":predict"


class ServingApp:
    """The ASGI entry point: body limit, the inference fast path, then FastAPI."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.plane = DataPlane(settings)
        self.inference = RestInference(self.plane)
        self.fastapi = create_fastapi(self.plane, self.inference)
        self.fast_path = settings.fast_path
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.fastapi(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except PayloadTooLargeError as exc:
            kept = await self._drain(scope, receive)
            await _send(send, error_reply(exc), close=not kept)
            return
        except _DisconnectedError:
            return
        call = self._fast(scope, body) if self.fast_path else None
        if call is None:
            await self.fastapi(scope, _replay(body), send)
            return
        try:
            reply = await call
        except Exception as exc:
            reply = error_reply(exc)
        await _send(send, reply)

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

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body
        declared = _declared_length(scope)
        if declared > limit:
            raise PayloadTooLargeError(
                f"request body of {declared} bytes is over the limit of {limit} bytes"
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
                    raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(self, scope: Scope, receive: Receive) -> bool:
        """Read and drop the rest of an oversized body, so that the connection can serve
        the next request: True when it ended within twice ``max_body_bytes`` (beyond
        that the connection is closed, which stops the upload)."""
        budget = 2 * self.max_body
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
    return ServingApp(settings)
