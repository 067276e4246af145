"""Inference latency while clients flood the feedback endpoint with large bodies.

    .venv/bin/python bench/serving/feedback_flood.py --model DIR [--feedback-mib 1]

Starts ``kubeloop serve`` on loopback (``--model``: a ``kubeloop train`` output of a
30-feature classifier such as breast cancer), measures one-row inference latency alone,
then again while ``--senders`` threads post feedback bodies of ``--feedback-mib`` MiB
(unknown ids) back to back. Prints p50/p99 of each. Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

KUBELOOP = Path(sys.executable).with_name("kubeloop")
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
INFER = {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}


def start(model: str, feedback_mib: float) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    limit = int(feedback_mib * 1024 * 1024) + 1024
    env.update(
        KUBELOOP_SERVING_DRAIN_SECONDS="0",
        KUBELOOP_SERVING_MAX_FEEDBACK_BYTES=str(limit),
        KUBELOOP_SERVING_MAX_BODY_BYTES=str(max(limit, 8 * 1024 * 1024)),
    )
    args = [str(KUBELOOP), "serve", "--model", model, "--name", "m", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*args, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = RUNNING.search(line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            url = f"http://127.0.0.1:{found.group(1)}"
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.1)
            return proc, url
    raise SystemExit("the server exited")


def latencies(url: str, n: int) -> list[float]:
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(n):
            t = time.perf_counter()
            assert http.post("/v2/models/m/infer", json=INFER).status_code == 200
            out.append(time.perf_counter() - t)
    return out


def flood(url: str, body: bytes, stop: threading.Event, sent: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        while not stop.is_set():
            r = http.post("/v2/models/m/feedback", content=body)
            assert r.status_code == 200, r.text[:200]
            sent.append(1)


def report(name: str, values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100)
    print(f"{name:>24}: p50 {cuts[49] * 1000:7.2f} ms   p99 {cuts[98] * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--feedback-mib", type=float, default=1.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000)
    opts = parser.parse_args()
    item = orjson.dumps({"id": "nobody-0000000", "truth": 1}) + b","
    body = b"[" + item * int(opts.feedback_mib * 1024 * 1024 / len(item)) + b"{}]"
    body = body.replace(b",{}]", b"]")
    proc, url = start(opts.model, opts.feedback_mib)
    try:
        latencies(url, 200)  # warm up
        report("alone", latencies(url, opts.requests))
        stop, sent = threading.Event(), []
        senders = [
            threading.Thread(target=flood, args=(url, body, stop, sent))
            for _ in range(opts.senders)
        ]
        for s in senders:
            s.start()
        while not sent:
            time.sleep(0.05)
        report(f"feedback flood {opts.feedback_mib:g} MiB", latencies(url, opts.requests))
        stop.set()
        for s in senders:
            s.join()
        print(f"{'feedback bodies':>24}: {len(sent)}")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
