"""The FastAPI application: thin routes over the data plane.

Each handler turns path parameters and a body into one data-plane (or
:class:`~kubeloop.serving.rest.inference.RestInference`) call and its result into a
response; :func:`routes` is the table of paths. Every error is answered by one
handler through :func:`~kubeloop.serving.rest.reply.error_reply`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

from kubeloop.driftreport import CSP, render_html
from kubeloop.serving.cli import connection_timeout
from kubeloop.serving.dataplane import DataPlane
from kubeloop.serving.errors import ServingError, UnavailableError
from kubeloop.serving.peers import FORWARDED_HEADER
from kubeloop.serving.rest.inference import V1, V2, Codec, RestInference
from kubeloop.serving.rest.openapi import FEEDBACK_BODY, INFER_BODY, V1_BODY
from kubeloop.serving.rest.reply import Reply, error_reply, json_reply
from kubeloop.serving.rest.v2 import decode_feedback

#: most unknown request ids a feedback answer lists
MAX_UNKNOWN_IDS = 100
#: the drift report page: its own policy (no script, nothing external), never cached
HTML_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


def response(reply: Reply) -> Response:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
    return Response(reply.body, status_code=reply.status, headers=headers)


def _json(doc: Any, status: int = 200) -> Response:
    return response(json_reply(doc, status))


class Endpoints:
    """The route handlers (bound methods; FastAPI reads their signatures)."""

    def __init__(self, plane: DataPlane, inference: RestInference) -> None:
        self.plane = plane
        self.inference = inference
        #: feedback, load, unload and the drift report need the bearer token (when one is
        #: configured)
        self.guard = plane.guard

    # ------------------------------------------------------------ health, metadata

    async def server_metadata(self) -> Response:
        return _json(self.plane.server_metadata())

    async def live(self) -> Response:
        return _json({"live": True})

    async def ready(self) -> Response:
        slot = self.plane.slot
        if not slot.ready:
            raise UnavailableError(f"not ready: {slot.not_ready_reason()}")
        return _json({"ready": True})

    async def model_metadata(self, name: str) -> Response:
        return self._metadata(name, None)

    async def model_version_metadata(self, name: str, version: str) -> Response:
        return self._metadata(name, version)

    async def model_ready(self, name: str) -> Response:
        return self._ready(name, None)

    async def model_version_ready(self, name: str, version: str) -> Response:
        return self._ready(name, version)

    def _metadata(self, name: str, version: str | None) -> Response:
        return _json(self.plane.model(name, version).metadata())

    def _ready(self, name: str, version: str | None) -> Response:
        self.plane.model(name, version)  # 404 for unknown names and versions
        if not self.plane.model_ready(name, version):
            raise UnavailableError(f"model '{name}' is not ready")
        return _json({"name": name, "ready": True})

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, request: Request) -> Response:
        return await self._infer(V2, name, None, request)

    async def infer_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(V2, name, version, request)

    async def v1_predict(self, name: str, request: Request) -> Response:
        return await self._infer(V1, name, None, request)

    async def _infer(
        self, codec: Codec, name: str, version: str | None, request: Request
    ) -> Response:
        headers = dict(request.scope["headers"])
        body = await request.body()
        return response(
            await self.inference.infer(codec, name, version, body, headers, request.url.path)
        )

    async def feedback(self, name: str, request: Request) -> Response:
        headers = dict(request.scope["headers"])
        self.guard.check(headers)
        model = self.plane.model(name)
        body, limits = await request.body(), self.plane.limits  # the front spent the budget
        # decoded and scored on the feedback thread: a large body never stalls inference
        result = await self.plane.feedback.record_off_loop(
            model, lambda: decode_feedback(body, limits)
        )
        doc: dict[str, Any] = {
            "matched": result.matched,
            "duplicates": result.duplicates,
            "unknown": len(result.unknown),
            "unknown_ids": result.unknown[:MAX_UNKNOWN_IDS],
            "metric": result.metric,
            "value": result.value,
            "rows": result.rows,
        }
        peers = self.plane.peers
        # the log records each label once: every pod the items it knows, the pod the
        # client called also those no pod knows (their predictions may be logged still)
        logged = list(result.known_items)
        if FORWARDED_HEADER.encode() in headers:
            doc["matched_ids"] = list(result.known)  # for the pod that forwarded them
        elif peers is not None and result.unknown_items:
            forwarded = await peers.forward(model.name, result.unknown_items, headers)
            unknown = [rid for rid in result.unknown if rid not in forwarded.matched_ids]
            doc.update(
                matched=result.matched + forwarded.matched_rows,
                unknown=len(unknown),
                unknown_ids=unknown[:MAX_UNKNOWN_IDS],
                peers=forwarded.peers,
                peers_failed=forwarded.failed,
            )
            taken = set(forwarded.matched_ids)
            logged += [item for item in result.unknown_items if item[0] not in taken]
        else:
            logged += result.unknown_items
        self.plane.log_feedback(model, logged)
        return _json(doc)

    # --------------------------------------------------------------- drift report

    # Built off the event loop: a model of many features takes tens of milliseconds.

    async def drift(self, name: str, request: Request) -> Response:
        self.guard.check_report(dict(request.scope["headers"]))
        report = await run_in_threadpool(self.plane.drift_report, name)
        return _json(report.model_dump(mode="json"))

    async def drift_report(self, name: str, request: Request) -> Response:
        self.guard.check_report(dict(request.scope["headers"]))
        page = await run_in_threadpool(lambda: render_html(self.plane.drift_report(name)))
        return Response(page, media_type="text/html; charset=utf-8", headers=HTML_HEADERS)

    # ---------------------------------------------------------- model repository

    async def repository_index(self) -> Response:
        return _json(self.plane.repository_index())

    async def repository_load(self, name: str, request: Request) -> Response:
        self.guard.check_model_control(dict(request.scope["headers"]))
        loaded = await self.plane.load(name)
        return _json({"name": loaded.name, "version": loaded.version, "sha256": loaded.sha256})

    async def repository_unload(self, name: str, request: Request) -> Response:
        self.guard.check_model_control(dict(request.scope["headers"]))
        await self.plane.unload(name)
        return _json({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})

    async def v1_models(self) -> Response:
        model = self.plane.slot.model
        return _json({"models": [model.name] if model is not None else []})

    async def v1_model(self, name: str) -> Response:
        self.plane.model(name)  # 404 for unknown names
        ok = self.plane.model_ready(name)
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def metrics(self) -> Response:
        return Response(
            generate_latest(self.plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


def routes(e: Endpoints) -> list[BaseRoute]:
    """Every route: path, handler, method and its OpenAPI summary."""
    get, post = ["GET"], ["POST"]
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        APIRoute("/v2", e.server_metadata, methods=get, summary="Server metadata"),
        APIRoute("/v2/health/live", e.live, methods=get, summary="Liveness"),
        APIRoute("/v2/health/ready", e.ready, methods=get, summary="Readiness"),
        APIRoute("/v2/models/{name}", e.model_metadata, methods=get, summary="Model metadata"),
        APIRoute(versioned, e.model_version_metadata, methods=get,
                 summary="Model version metadata"),
        APIRoute("/v2/models/{name}/ready", e.model_ready, methods=get,
                 summary="Model readiness"),
        APIRoute(f"{versioned}/ready", e.model_version_ready, methods=get,
                 summary="Model version readiness"),
        APIRoute("/v2/models/{name}/infer", e.infer, methods=post, summary="Inference",
                 openapi_extra={"requestBody": INFER_BODY}),
        APIRoute(f"{versioned}/infer", e.infer_version, methods=post,
                 summary="Inference on a version", openapi_extra={"requestBody": INFER_BODY}),
        APIRoute("/v2/models/{name}/feedback", e.feedback, methods=post,
                 summary="Ground truth for earlier predictions, by request id",
                 openapi_extra={"requestBody": FEEDBACK_BODY}),
        APIRoute("/v2/models/{name}/drift", e.drift, methods=get,
                 summary="Drift per feature: reference and live shares, PSI (JSON)"),
        APIRoute("/v2/models/{name}/drift-report", e.drift_report, methods=get,
                 summary="Drift report: a self-contained HTML page"),
        APIRoute("/v2/repository/index", e.repository_index, methods=post,
                 summary="Models in the repository"),
        APIRoute("/v2/repository/models/{name}/load", e.repository_load, methods=post,
                 summary="(Re)load the model from its location (needs model control)"),
        APIRoute("/v2/repository/models/{name}/unload", e.repository_unload, methods=post,
                 summary="Unload the model: not ready until the next load (needs model control)"),
        APIRoute("/v1/models", e.v1_models, methods=get, summary="V1: list models"),
        APIRoute("/v1/models/{name}", e.v1_model, methods=get, summary="V1: model readiness"),
        APIRoute("/v1/models/{name}:predict", e.v1_predict, methods=post, summary="V1: predict",
                 openapi_extra={"requestBody": V1_BODY}),
        APIRoute("/metrics", e.metrics, methods=get, summary="Prometheus metrics"),
    ]  # fmt: skip


async def _error(_: Request, exc: Exception) -> Response:
    return response(error_reply(exc))


class Service(Protocol):
    """Another server in the same event loop (gRPC): started after the data plane, stopped
    before it."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


def create_fastapi(
    plane: DataPlane, inference: RestInference, services: Sequence[Service] = ()
) -> FastAPI:
    """The FastAPI application: every route, thin, over ``plane``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        try:
            for service in services:
                await service.start()
            yield
        finally:
            grace = connection_timeout(plane.settings.shutdown_timeout)
            for service in services:
                await service.stop(grace)
            await plane.stop()

    app = FastAPI(
        title="Kubeloop serving",
        description="Open Inference Protocol v2 and KServe V1 over onnxruntime.",
        lifespan=lifespan,
        routes=routes(Endpoints(plane, inference)),
    )
    for kind in (ServingError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, _error)
    return app
