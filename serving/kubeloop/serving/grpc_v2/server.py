"""The ``GRPCInferenceService`` on ``grpc.aio``, in the event loop uvicorn runs.

Thin like the REST routes: each RPC turns a message into data-plane calls and their
result into a message. Inference follows the REST V2 path step by step — the model
named, the canary's share forwarded (to the canary's REST port, the port it is known
by), the shared decoder and limits, the data plane, the shadow mirror — and counts each
request in the same metrics with ``protocol="grpc"`` and the HTTP status the error maps
from, so the canary analysis reads both protocols alike. Requests in flight count
against the same ``max_in_flight`` as REST (``RESOURCE_EXHAUSTED`` above).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import grpc
import orjson

from kubeloop.serving.dataplane import DataPlane
from kubeloop.serving.errors import NotFoundError, ServingError
from kubeloop.serving.grpc_v2 import grpc_predict_v2_pb2 as pb
from kubeloop.serving.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from kubeloop.serving.grpc_v2.codec import (
    from_rest,
    infer_response,
    model_metadata,
    request_document,
    rest_body,
    shadow_body,
)
from kubeloop.serving.limits import ENV_PREFIX
from kubeloop.serving.metrics import RequestCounter
from kubeloop.serving.rest.reply import Reply
from kubeloop.serving.rest.v2 import decode_request
from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")

#: the ``protocol`` label of the request metrics
PROTOCOL = "grpc"
Context = grpc.aio.ServicerContext[Any, Any]

#: the gRPC status of each HTTP status a :class:`ServingError` carries
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(http_status: int) -> grpc.StatusCode:
    return STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


class Gate(Protocol):
    """The requests in flight, shared with REST (the ASGI front owns the count)."""

    in_flight: int
    max_in_flight: int


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the Open Inference Protocol v2, over one :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, gate: Gate) -> None:
        self.plane = plane
        self.gate = gate
        self._router = plane.router
        self._requests = RequestCounter(plane.metrics, plane.slot.served_name)
        self._max_rows = plane.settings.max_rows
        self._limits = plane.limits

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.plane.slot.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:  # noqa: N802
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:  # noqa: N802
        name, version = request.name, request.version or None
        try:
            ready = self.plane.model_ready(name, version)
            if not ready:
                self.plane.model(name, version)  # NOT_FOUND for another name or version
        except NotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
        except ServingError:
            pass  # none loaded yet: not ready
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:  # noqa: N802
        try:
            model = self.plane.model(request.name, request.version or None)
        except ServingError as exc:
            await context.abort(status_code(exc.status_code), exc.message)
        return model_metadata(model)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:  # noqa: N802
        gate = self.gate
        if gate.in_flight >= gate.max_in_flight:
            self.plane.metrics.rejected.inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{gate.max_in_flight} requests are being served, the most allowed "
                f"({ENV_PREFIX}MAX_IN_FLIGHT); retry shortly",
            )
        gate.in_flight += 1
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            await context.abort(status_code(exc.status_code), exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gRPC inference failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            gate.in_flight -= 1

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        plane, router = self.plane, self._router
        name, version = request.model_name, request.model_version or None
        served = plane.slot.model
        mv = served.version if served is not None and served.name == name else ""
        code = 500
        try:
            model = plane.model(name, version)
            doc, binary = request_document(request)
            path = f"/v2/models/{name}/infer"
            # only unversioned requests go to the canary, in the configured share
            if version is None and router.forwarding and router.to_canary():
                reply = await router.forward(path, *rest_body(doc, binary))
                if reply is not None:
                    code = 0  # the canary's answer, counted under its version
                    cv = router.canary_version
                    self._requests.count(name, cv, PROTOCOL, reply.status, "canary", started)
                    return canary_answer(reply)
            decoded = decode_request(
                doc,
                binary,
                model.inputs,
                model.index,
                max_rows=self._max_rows,
                output_names=model.output_names,
                limits=self._limits,
                booleans=False,  # typed contents hold no JSON true/false
            )
            request_id = decoded.request_id or self._metadata_id(context) or plane.new_request_id()
            # grpc.aio accepts one RPC per loop turn: without lingering, none would batch
            outputs = await plane.infer(model, decoded, request_id, started, linger=True)
            response = infer_response(model, decoded, request_id, outputs)
            if router.shadowing:
                body = shadow_body(model, decoded)
                router.mirror(model, path, body, outputs[model.label_output])
            code = 200
            return response
        except ServingError as exc:
            code = code and exc.status_code
            raise
        finally:
            if code:
                self._requests.count(name, mv, PROTOCOL, code, "stable", started)

    def _metadata_id(self, context: Context) -> str | None:
        """The ``x-request-id`` metadata's id (INVALID_ARGUMENT when over the id limit)."""
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str) and value:
                return self._limits.check_id(value, "the x-request-id metadata")
        return None


def canary_answer(reply: Reply) -> pb.ModelInferResponse:
    """The canary's REST answer as gRPC's: its outputs, or its error (a 4xx) raised."""
    headers = dict(reply.headers)
    if reply.status == 200:
        length = headers.get(b"inference-header-content-length")
        return from_rest(reply.body, None if length is None else length.decode())
    message = f"the canary answered {reply.status}"
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        message = str(orjson.loads(reply.body).get("error") or message)
    raise ServingError(message, reply.status)


class GrpcServer:
    """The gRPC server's life: bound and started with the application, stopped (once) with
    the same grace as HTTP connections get."""

    def __init__(self, plane: DataPlane, gate: Gate, settings: ServingSettings) -> None:
        self.service = InferenceService(plane, gate)
        self.settings = settings
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        assert settings.grpc_port is not None
        options = [
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # several workers share the port; one worker must not share it with a stranger
            ("grpc.so_reuseport", int(settings.workers > 1)),
        ]
        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        credentials = _credentials(settings)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._server = server
        log.info("gRPC (Open Inference Protocol v2) listening on %s:%d", host, self.port)

    def begin_stop(self, grace: float) -> None:
        """Stop accepting RPCs; those in flight get ``grace`` seconds to finish."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop(grace))

    async def stop(self, grace: float) -> None:
        """Stop (or wait for the stop :meth:`begin_stop` began)."""
        self.begin_stop(grace)
        if self._stopping is not None:
            await asyncio.shield(self._stopping)


def _credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """The REST port's certificate and key (read once: gRPC does not reload them)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])
