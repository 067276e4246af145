"""HTTP transport: thin FastAPI routes over the data plane, behind a small ASGI front.

The front (:class:`ServingApp`) reads every request body once, with the size
limit (413), and — when ``fast_path`` is on — answers the two inference routes
itself, calling the same data-plane methods the FastAPI routes call. That skips
the framework's per-request routing and dependency machinery (measured at about
100 µs a request on this stack, more than the model call for small models). All
other routes, the OpenAPI document and the lifespan go through FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubeloop.serving.dataplane import JSON, DataPlane, Reply, error_reply
from kubeloop.serving.errors import (
    BadRequestError,
    PayloadTooLargeError,
    ServingError,
    UnavailableError,
)
from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype", "data"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer"}},
                                "datatype": {
                                    "type": "string",
                                    "enum": ["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"],
                                },
                                "parameters": {"type": "object"},
                                "data": {"type": "array"},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                },
            }
        }
    },
}
_V1_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                    }
                },
            }
        }
    },
}


def _response(reply: Reply) -> Response:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
    return Response(reply.body, status_code=reply.status, headers=headers)


def _headers(request: Request) -> dict[bytes, bytes]:
    return dict(request.scope["headers"])


def create_fastapi(plane: DataPlane) -> FastAPI:
    """The FastAPI application: every route, thin, over ``plane``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        try:
            yield
        finally:
            await plane.stop()

    app = FastAPI(
        title="Kubeloop serving",
        description="Open Inference Protocol v2 and KServe V1 over onnxruntime.",
        lifespan=lifespan,
    )

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> Response:
        return _response(error_reply(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _response(error_reply(ServingError(str(exc.detail), exc.status_code)))

    @app.exception_handler(Exception)
    async def _server_fault(_: Request, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc)
        return _response(error_reply(ServingError("internal error; see the server log")))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _response(error_reply(BadRequestError(str(exc.errors()))))

    # --------------------------------------------------------------- OIP v2

    @app.get("/v2", summary="Server metadata")
    async def server_metadata() -> Response:
        return _response(plane.server_metadata())

    @app.get("/v2/health/live", summary="Liveness")
    async def live() -> Response:
        return _response(Reply(200, b'{"live":true}', [(b"content-type", JSON)]))

    @app.get("/v2/health/ready", summary="Readiness")
    async def ready() -> Response:
        if plane.ready:
            return _response(Reply(200, b'{"ready":true}', [(b"content-type", JSON)]))
        reason = plane.last_load_error or (
            "shutting down" if plane.shutting_down else "model not loaded yet"
        )
        raise UnavailableError(f"not ready: {reason}")

    @app.get("/v2/models/{name}", summary="Model metadata")
    async def model_metadata(name: str) -> Response:
        return _response(plane.model_metadata(name))

    @app.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
    async def model_version_metadata(name: str, version: str) -> Response:
        return _response(plane.model_metadata(name, version))

    async def _model_ready(name: str, version: str | None) -> Response:
        plane.model_metadata(name, version)  # 404 for unknown names and versions
        if not plane.model_ready(name, version):
            raise UnavailableError(f"model '{name}' is not ready")
        return _response(
            Reply(200, b'{"name":"%s","ready":true}' % name.encode(), [(b"content-type", JSON)])
        )

    @app.get("/v2/models/{name}/ready", summary="Model readiness")
    async def model_ready(name: str) -> Response:
        return await _model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness")
    async def model_version_ready(name: str, version: str) -> Response:
        return await _model_ready(name, version)

    @app.post(
        "/v2/models/{name}/infer", summary="Inference", openapi_extra={"requestBody": _INFER_BODY}
    )
    async def infer(name: str, request: Request) -> Response:
        body = await request.body()
        return _response(
            await plane.infer_v2(name, None, body, _headers(request), request.url.path)
        )

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Inference on a version",
        openapi_extra={"requestBody": _INFER_BODY},
    )
    async def infer_version(name: str, version: str, request: Request) -> Response:
        body = await request.body()
        return _response(
            await plane.infer_v2(name, version, body, _headers(request), request.url.path)
        )

    @app.post(
        "/v2/models/{name}/feedback",
        summary="Ground truth for earlier predictions, by request id",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
            }
        },
    )
    async def feedback(name: str, request: Request) -> Response:
        return _response(plane.feedback_request(name, await request.body()))

    @app.post("/v2/repository/index", summary="Models in the repository")
    async def repository_index() -> Response:
        return _response(plane.repository_index())

    @app.post("/v2/repository/models/{name}/load", summary="(Re)load the model from its location")
    async def repository_load(name: str) -> Response:
        return _response(await plane.load_request(name))

    # ------------------------------------------------------------- KServe V1

    @app.get("/v1/models", summary="V1: list models")
    async def v1_models() -> Response:
        model = plane.model
        names = [model.name] if model is not None else []
        return _response(
            Reply(
                200,
                b'{"models":%b}' % str(names).replace("'", '"').encode(),
                [(b"content-type", JSON)],
            )
        )

    @app.get("/v1/models/{name}", summary="V1: model readiness")
    async def v1_model(name: str) -> Response:
        plane.model_metadata(name)
        ok = plane.model_ready(name)
        return _response(
            Reply(
                200 if ok else 503,
                b'{"name":"%s","ready":%s}' % (name.encode(), b"true" if ok else b"false"),
                [(b"content-type", JSON)],
            )
        )

    @app.post(
        "/v1/models/{name}:predict", summary="V1: predict", openapi_extra={"requestBody": _V1_BODY}
    )
    async def v1_predict(name: str, request: Request) -> Response:
        body = await request.body()
        return _response(await plane.predict_v1(name, body, _headers(request), request.url.path))

    # ---------------------------------------------------------------- metrics

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class ServingApp:
    """The ASGI entry point: body limit, the inference fast path, then FastAPI."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.plane = DataPlane(settings)
        self.fastapi = create_fastapi(self.plane)
        self.fast_path = settings.fast_path
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.fastapi(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except PayloadTooLargeError as exc:
            await _send(send, error_reply(exc), close=True)
            return
        except _DisconnectedError:
            return
        path: str = scope["path"]
        if self.fast_path:
            try:
                reply = await self._fast(scope, path, body)
            except ServingError as exc:
                reply = error_reply(exc)
            except Exception:
                log.exception("inference failed")
                reply = error_reply(ServingError("internal error; see the server log"))
            if reply is not None:
                await _send(send, reply)
                return
        await self.fastapi(scope, _replay(body), send)

    async def _fast(self, scope: Scope, path: str, body: bytes) -> Reply | None:
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            rest = path[11:-6]
            version: str | None = None
            if "/versions/" in rest:
                rest, version = rest.split("/versions/", 1)
            if not rest or "/" in rest or (version is not None and (not version or "/" in version)):
                return None
            return await self.plane.infer_v2(rest, version, body, dict(scope["headers"]), path)
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            name = path[11:-8]
            if not name or "/" in name:
                return None
            return await self.plane.predict_v1(name, body, dict(scope["headers"]), path)
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    raise PayloadTooLargeError(
                        f"request body of {declared} bytes is over the limit of {limit} bytes"
                    )
                break
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
