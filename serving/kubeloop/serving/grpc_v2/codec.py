"""gRPC messages to and from the REST V2 codec's terms.

A ``ModelInferRequest`` becomes the document the REST V2 codec decodes — the same
``inputs``/``outputs``/``parameters`` shape, ``raw_input_contents`` as its binary part
(each input's ``binary_data_size``) and typed ``contents`` as its ``data`` — so one set
of rules (:func:`kubeloop.serving.rest.v2.decode_request`) validates both protocols.
Answers carry ``raw_output_contents``, the layout of the binary-tensor extension.
Pure functions; a client mistake raises
:class:`~kubeloop.serving.errors.BadRequestError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.grpc_v2 import grpc_predict_v2_pb2 as pb
from kubeloop.serving.model import LoadedModel
from kubeloop.serving.rest.parsing import show
from kubeloop.serving.tensors import Decoded, to_bytes

#: the ``InferTensorContents`` field that holds a tensor of each datatype
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Document = dict[str, Any]


def request_document(req: pb.ModelInferRequest) -> tuple[Document, memoryview]:
    """The request as a REST V2 document and its binary part."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise BadRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; give "
            "one per input, in the order of 'inputs'"
        )
    inputs = [_input(tensor, raw[pos] if raw else None) for pos, tensor in enumerate(req.inputs)]
    doc: Document = {"inputs": inputs}
    if req.id:
        doc["id"] = req.id
    if req.parameters:
        doc["parameters"] = parameters(req.parameters, "the request")
    if req.outputs:
        doc["outputs"] = [_requested(out) for out in req.outputs]
    binary = memoryview(raw[0] if len(raw) == 1 else b"".join(raw))
    return doc, binary


def _input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Document:
    name = tensor.name
    item: Document = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    params = parameters(tensor.parameters, f"input {show(name)}") if tensor.parameters else None
    if raw is not None:
        if tensor.HasField("contents"):
            raise BadRequestError(
                f"input {show(name)} has 'contents' beside raw_input_contents; use one or the other"
            )
        params = {**(params or {}), "binary_data_size": len(raw)}
    else:
        item["data"] = _values(tensor, name)
    if params is not None:
        item["parameters"] = params
    return item


def _values(tensor: pb.ModelInferRequest.InferInputTensor, name: str) -> list[Any]:
    """The input's values, from the contents field of its datatype (an unknown datatype
    is the decoder's to refuse: its values are then none)."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    contents = tensor.contents
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise BadRequestError(
                f"input {show(name)} is {show(tensor.datatype)} but its values are in "
                f"{descriptor.name}; they go in {field or 'a field of a supported datatype'}"
            )
    if field is None:
        return []
    values = list(getattr(contents, field))
    if field == "bytes_contents":
        try:
            return [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise BadRequestError(f"input {show(name)}: a BYTES element is not UTF-8") from None
    return values


def _requested(out: pb.ModelInferRequest.InferRequestedOutputTensor) -> Document:
    item: Document = {"name": out.name}
    if out.parameters:
        item["parameters"] = parameters(out.parameters, f"output {show(out.name)}")
    return item


def parameters(params: Mapping[str, pb.InferParameter], where: str) -> dict[str, Any]:
    """An ``InferParameter`` map as the plain values a REST request's would hold."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise BadRequestError(
                f"{where}: parameter {show(key)} has no bool, int64 or string value"
            )
        out[key] = getattr(param, choice)
    return out


# ----------------------------------------------------------------- response


def infer_response(
    model: LoadedModel, request: Decoded, request_id: str, outputs: Mapping[str, Any]
) -> pb.ModelInferResponse:
    """The answer: the requested outputs (all by default), as raw contents."""
    wanted = request.outputs
    resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
    for spec in model.outputs:
        if wanted is not None and spec.name not in wanted:
            continue
        arr = outputs[spec.name]
        resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=arr.shape)
        resp.raw_output_contents.append(to_bytes(arr, spec.datatype))
    return resp


def model_metadata(model: LoadedModel) -> pb.ModelMetadataResponse:
    meta = model.metadata()
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[_tensor_metadata(t) for t in meta["inputs"]],
        outputs=[_tensor_metadata(t) for t in meta["outputs"]],
    )


def _tensor_metadata(t: Mapping[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=t["name"], datatype=t["datatype"], shape=t["shape"]
    )


# ------------------------------------------------------- canary (over REST)


def rest_body(doc: Document, binary: memoryview) -> tuple[bytes, dict[bytes, bytes]]:
    """The request as a REST V2 body and headers, asking for binary outputs: what a
    gRPC request forwarded to the canary's REST port is sent as."""
    header = orjson.dumps({**doc, "parameters": {**doc.get("parameters", {}), **_BINARY_OUT}})
    headers = {b"content-type": b"application/octet-stream"}
    if not len(binary):
        return header, {b"content-type": b"application/json"}
    headers[b"inference-header-content-length"] = str(len(header)).encode()
    return header + bytes(binary), headers


_BINARY_OUT = {"binary_data_output": True}


def from_rest(status_body: bytes, header_length: str | None) -> pb.ModelInferResponse:
    """A REST V2 infer answer (JSON, or JSON header and binary outputs) as gRPC's."""
    cut = len(status_body) if header_length is None else int(header_length)
    doc = orjson.loads(status_body[:cut])
    resp = pb.ModelInferResponse(
        model_name=doc.get("model_name", ""),
        model_version=doc.get("model_version", ""),
        id=doc.get("id", ""),
    )
    offset = cut
    for out in doc.get("outputs", ()):
        resp.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arr = np.asarray(out["data"], dtype=object if out["datatype"] == "BYTES" else None)
            resp.raw_output_contents.append(to_bytes(arr, out["datatype"]))
        else:
            resp.raw_output_contents.append(status_body[offset : offset + size])
            offset += size
    return resp


def shadow_body(model: LoadedModel, request: Decoded) -> bytes:
    """The decoded request as plain REST V2 JSON (what the shadow mirror sends)."""
    inputs = [
        {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": [request.rows],
            "data": col.tolist(),
        }
        for spec, col in zip(model.inputs, request.columns, strict=True)
    ]
    return orjson.dumps({"inputs": inputs})
