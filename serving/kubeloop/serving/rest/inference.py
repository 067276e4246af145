"""The REST inference path: body bytes and headers in, a :class:`Reply` out.

One path for both protocols — validate the model, forward to the canary or decode,
infer, encode, mirror, count — with a :class:`Codec` per protocol for the parts
that differ. The ASGI fast path and the FastAPI routes both call
:meth:`RestInference.infer`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from kubeloop.serving.batching import Outputs
from kubeloop.serving.dataplane import DataPlane
from kubeloop.serving.errors import ServingError
from kubeloop.serving.limits import RequestLimits
from kubeloop.serving.metrics import RequestCounter
from kubeloop.serving.model import LoadedModel
from kubeloop.serving.rest.reply import JSON, JSON_HEADERS, Reply
from kubeloop.serving.rest.v1 import decode_v1, encode_v1
from kubeloop.serving.rest.v2 import decode_v2, encode_v2, header_length
from kubeloop.serving.tensors import Decoded

HeaderMap = Mapping[bytes, bytes]


class Codec(Protocol):
    """How one protocol reads a request and writes the answer."""

    #: the ``protocol`` label of the request metrics
    protocol: str

    def decode(
        self,
        model: LoadedModel,
        body: bytes,
        headers: HeaderMap,
        max_rows: int,
        limits: RequestLimits,
    ) -> Decoded:
        """The validated request (its ``request_id`` when the body carries one)."""

    def encode(
        self, model: LoadedModel, request: Decoded, request_id: str, outputs: Outputs
    ) -> Reply:
        """The 200 answer."""


class V2Codec:
    """Open Inference Protocol v2: JSON, or a JSON header and binary tensors."""

    protocol = "v2"

    def decode(
        self,
        model: LoadedModel,
        body: bytes,
        headers: HeaderMap,
        max_rows: int,
        limits: RequestLimits,
    ) -> Decoded:
        length = headers.get(b"inference-header-content-length")
        return decode_v2(
            body,
            model.inputs,
            model.index,
            header_length=None if length is None else header_length(length),
            max_rows=max_rows,
            output_names=model.output_names,
            limits=limits,
        )

    def encode(
        self, model: LoadedModel, request: Decoded, request_id: str, outputs: Outputs
    ) -> Reply:
        pairs = [(spec, outputs[spec.name]) for spec in model.outputs]
        payload, json_length = encode_v2(model.name, model.version, request_id, pairs, request)
        if json_length is None:
            return Reply(200, payload, JSON_HEADERS)
        return Reply(
            200,
            payload,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_length).encode()),
            ],
        )


class V1Codec:
    """KServe V1: ``instances`` in, ``predictions`` out; the id goes in ``x-request-id``."""

    protocol = "v1"

    def decode(
        self,
        model: LoadedModel,
        body: bytes,
        headers: HeaderMap,
        max_rows: int,
        limits: RequestLimits,
    ) -> Decoded:
        return decode_v1(body, model.inputs, model.index, max_rows=max_rows)

    def encode(
        self, model: LoadedModel, request: Decoded, request_id: str, outputs: Outputs
    ) -> Reply:
        proba = model.proba_output
        payload = encode_v1(outputs[model.label_output], outputs[proba] if proba else None)
        return Reply(
            200, payload, [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
        )


V2 = V2Codec()
V1 = V1Codec()


class RestInference:
    """Runs inference requests over the data plane and counts each one."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._slot = plane.slot
        self._router = plane.router
        self._requests = RequestCounter(plane.metrics, plane.slot.served_name)
        self._max_rows = plane.settings.max_rows
        self._limits = plane.limits

    async def infer(
        self,
        codec: Codec,
        name: str,
        version: str | None,
        body: bytes,
        headers: HeaderMap,
        path: str,
    ) -> Reply:
        """Answer one inference request for model ``name`` (``version``: None for any)."""
        started = time.perf_counter()
        plane = self.plane
        served = self._slot.model
        mv = served.version if served is not None and served.name == name else ""
        code = 500
        router = self._router
        try:
            model = plane.model(name, version)
            # only unversioned requests go to the canary, in the configured share
            if version is None and router.forwarding and router.to_canary(self._sticky(headers)):
                reply = await router.forward(path, body, headers)
                if reply is not None:
                    code = 0  # the canary's answer, counted under its version
                    cv = router.canary_version
                    self._requests.count(name, cv, codec.protocol, reply.status, "canary", started)
                    return reply
            request = codec.decode(model, body, headers, self._max_rows, self._limits)
            request_id = request.request_id or self._header_id(headers) or plane.new_request_id()
            outputs = await plane.infer(model, request, request_id, started)
            reply = codec.encode(model, request, request_id, outputs)
            if router.shadowing:
                router.mirror(model, path, body, outputs[model.label_output])
            code = 200
            return reply
        except ServingError as exc:
            code = exc.status_code
            raise
        finally:
            if code:
                self._requests.count(name, mv, codec.protocol, code, "stable", started)

    def _sticky(self, headers: HeaderMap) -> bytes | None:
        """The sticky header's value (None: not configured or not sent)."""
        key = self._router.sticky_key
        return None if key is None else headers.get(key)

    def _header_id(self, headers: HeaderMap) -> str | None:
        """The ``x-request-id`` header's id (a 400 when over the id limit)."""
        value = headers.get(b"x-request-id")
        if not value:
            return None
        return self._limits.check_id(value.decode("latin-1"), "the x-request-id header")
