"""What one inference request costs the serving app itself, without HTTP: the ASGI app
called in-process on uvloop with a one-row V2 request, one at a time and 32 at once, in
CPU microseconds per request (all the process's threads, so the prediction log's writer
counts), beside the ceiling app's time for the same request. Steadier than req/s over
HTTP on a shared machine, and it shows what the app adds on top of the HTTP stack.

    .venv/bin/python bench/serving/inprocess.py [--full] [--requests N]

``--full``: every feature on, as ``run.py``'s kubeloop-full (drift, the prediction log
to a file, a token, a canary at 0 %).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py beside this file

import run as bench

App = Callable[..., Awaitable[None]]
Message = MutableMapping[str, Any]


def request(body: bytes) -> tuple[dict[str, Any], Callable[[], Awaitable[Message]]]:
    """The ASGI scope of a V2 inference request with ``body``, and its receive."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Bearer {bench.TOKEN}".encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": bench.PATHS["v2"], "headers": headers,
             "query_string": b""}  # fmt: skip

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return scope, receive


async def one(app: App, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]]) -> None:
    status: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"the app answered {status}")


async def per_request(app: App, body: bytes, n: int, together: int) -> float:
    """CPU microseconds per request over ``n`` requests, ``together`` at a time."""
    scope, receive = request(body)
    for _ in range(min(n, 2000)):  # warm-up
        await one(app, scope, receive)
    start = time.process_time()
    for _ in range(n // together):
        await asyncio.gather(*(one(app, scope, receive) for _ in range(together)))
    return (time.process_time() - start) / (n // together * together) * 1e6


async def measure_kubeloop(body: bytes, n: int) -> dict[int, float]:
    from kubeloop.serving.app import create_app

    app = create_app()
    await app.plane.start()
    deadline = time.monotonic() + 60
    while not app.plane.slot.ready:
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not load within 60 s")
        await asyncio.sleep(0.05)
    try:
        return {c: await per_request(app, body, n, c) for c in (1, 32)}
    finally:
        await app.plane.stop()


async def measure_ceiling(body: bytes, n: int) -> float:
    sys.path.insert(0, str(bench.ROOT))
    from bench.serving.ceiling import app

    return await per_request(app, body, n, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every feature on")
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeloop-inprocess-") as tmp:
        work = Path(tmp)
        csv, row = bench.write_data(work)
        body = bench.write_bodies(work, row)["v2"].read_bytes()
        model = bench.model_dirs(work, "logreg", ["kubeloop"], csv)["kubeloop"]
        os.environ |= {
            "KUBELOOP_SERVING_MODEL": str(model),
            "KUBELOOP_SERVING_NAME": "cancer",
            "KUBELOOP_SERVING_LOG_LEVEL": "warning",
            "BENCH_MODEL": str(model),
        }
        if args.full:
            os.environ |= bench.full_features_env(work)
        ceiling = uvloop.run(measure_ceiling(body, args.requests))
        kubeloop = uvloop.run(measure_kubeloop(body, args.requests))
    name = "kubeloop-full" if args.full else "kubeloop"
    print(f"ceiling, one at a time: {ceiling:.1f} us CPU per request")
    for c, us in kubeloop.items():
        print(f"{name}, {c} at a time: {us:.1f} us CPU per request ({us / ceiling:.2f}x)")


if __name__ == "__main__":
    main()
