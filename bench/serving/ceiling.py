"""The ceiling: a bare ASGI app that only parses the JSON body (an OIP v2 2-D tensor,
or KServe V1 ``instances``) and calls onnxruntime — no validation, metrics, drift or
logging. The same HTTP stack as ``kubeloop serve`` (uvicorn with uvloop and httptools,
orjson) and the same onnxruntime session options.

    BENCH_MODEL=DIR uvicorn bench.serving.ceiling:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
_session = ort.InferenceSession(
    (Path(os.environ["BENCH_MODEL"]) / "model.onnx").read_bytes(),
    _options,
    providers=["CPUExecutionProvider"],
)
_inputs = [i.name for i in _session.get_inputs()]
_outputs = [o.name for o in _session.get_outputs()]
_headers = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    doc = orjson.loads(body)
    if "instances" in doc:  # V1: rows
        x = np.asarray(doc["instances"], dtype=np.float32).T.copy()
    else:
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]).T.copy()
    values = _session.run(None, {name: x[j].reshape(-1, 1) for j, name in enumerate(_inputs)})
    if "instances" in doc:
        answer = {"predictions": values[0].ravel(), "probabilities": values[1]}
    else:
        answer = {
            "outputs": [
                {"name": n, "shape": list(v.shape), "data": v.ravel()}
                for n, v in zip(_outputs, values, strict=True)
            ]
        }
    out = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_headers, (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})
