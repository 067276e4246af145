"""REST vs gRPC on one ``kubeloop serve``: the same model (the cancer logistic
regression of run.py), the same one-row request — a 2-D FP32 tensor, as JSON over REST
V2 (wrk, as run.py drives it) and as ``raw_input_contents`` over gRPC (ghz, built from
the Go module proxy by ``hack/toolchain.sh ghz``) — at concurrency 1 and 32, each on
its own connections. ghz runs on one CPU (``--cpus 1``) as wrk runs one thread.

    make bench-serving                       # builds ghz and installs wrk first
    .venv/bin/python bench/serving/protocols.py --duration 10

Loopback only; one worker process. Not a timed test: it prints a table (and writes it
with --out).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py beside this file

import run as bench

PROTO = bench.ROOT / "serving/kubeloop/serving/grpc_v2/grpc_predict_v2.proto"
CALL = "inference.GRPCInferenceService.ModelInfer"
LIVE = "inference.GRPCInferenceService.ServerLive"
NAMES = {
    "rest": "REST V2 JSON (wrk)",
    "grpc": "gRPC ModelInfer (ghz)",
    "live": "gRPC ServerLive, no work (ghz)",
}
#: gRPC vs REST req/s at 32 connections: the goal (at least)
GOAL_32 = 1.5


def ghz_binary() -> Path:
    out = subprocess.run(
        [str(bench.ROOT / "hack/toolchain.sh"), "--print-dir", "ghz"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    binary = Path(out) / "ghz"
    if not binary.exists():
        raise SystemExit(f"no {binary}: run `hack/toolchain.sh ghz` (or make bench-serving)")
    return binary


def grpc_request(row: list[float]) -> dict[str, object]:
    raw = np.asarray([row], dtype="<f4").tobytes()
    return {
        "model_name": "cancer",
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, len(row)]}],
        "raw_input_contents": [base64.b64encode(raw).decode()],
    }


def ghz(
    ghz_bin: Path, address: str, data: Path, connections: int, seconds: int, call: str = CALL
) -> bench.Cell:
    """ghz's run; calls still in flight when the time is up are not counted."""
    out = subprocess.run(
        [str(ghz_bin), "--insecure", "--proto", str(PROTO), "--call", call,
         "--data-file", str(data), "-c", str(connections), "--connections", str(connections),
         "-z", f"{seconds}s", "--duration-stop", "ignore", "--cpus", "1", "-O", "json",
         address],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    report = json.loads(out)
    pct = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    return bench.Cell(pct[50], pct[99], float(report["rps"]), int(report["count"]) - ok)


def serve(model_dir: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    return subprocess.Popen(
        [str(bench.BIN / "kubeloop"), "serve", "--model", str(model_dir), "--name", "cancer",
         "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_answering(url: str, body: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(url, content=body.read_bytes(), headers=JSON)
            if r.status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"kubeloop serve not answering 200 at {url} (exit status {proc.poll()})")


JSON = {"content-type": "application/json"}


def measure(seconds: int, repeat: int) -> dict[tuple[str, int], bench.Cell]:
    ghz_bin = ghz_binary()
    results: dict[tuple[str, int], bench.Cell] = {}
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        work = Path(tmp)
        csv, row = bench.write_data(work)
        bodies = bench.write_bodies(work, row)
        data = work / "grpc.json"
        data.write_text(json.dumps(grpc_request(row)))
        model_dir = work / "model"
        bench.train_kubeloop(csv, *bench.MODELS["logreg"], model_dir)
        port, grpc_port = bench.free_port(), bench.free_port()
        proc = serve(model_dir, port, grpc_port)
        try:
            wait_answering(f"http://127.0.0.1:{port}{bench.PATHS['v2']}", bodies["v2"], proc)
            for _ in range(repeat):
                for c in bench.CONNECTIONS:
                    url = f"http://127.0.0.1:{port}{bench.PATHS['v2']}"
                    bench.log(f"REST V2, {c} connections")
                    bench.keep_best(results, ("rest", c), bench.wrk(url, bodies["v2"], c, seconds))
                    bench.log(f"gRPC, {c} connections")
                    cell = ghz(ghz_bin, f"127.0.0.1:{grpc_port}", data, c, seconds)
                    bench.keep_best(results, ("grpc", c), cell)
            # the gRPC stack's own ceiling here: an RPC that does no work
            bench.log("gRPC ServerLive, 32 connections")
            empty = work / "empty.json"
            empty.write_text("{}")
            cell = ghz(ghz_bin, f"127.0.0.1:{grpc_port}", empty, 32, seconds, LIVE)
            results[("live", 32)] = cell
        finally:
            proc.terminate()
            proc.wait(60)
    return results


def table(results: dict[tuple[str, int], bench.Cell]) -> str:
    lines = [
        "| protocol | connections | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    order = list(NAMES)
    for (protocol, c), cell in sorted(
        results.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))
    ):
        lines.append(
            f"| {NAMES[protocol]} | {c} | {cell.rps:.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | "
            f"{cell.errors} |"
        )
    rest, grpc = results.get(("rest", 32)), results.get(("grpc", 32))
    if rest and grpc:
        ratio = grpc.rps / rest.rps
        verdict = "met" if ratio >= GOAL_32 else "not met"
        lines.append("")
        lines.append(
            f"gRPC / REST req/s at 32 connections: {ratio:.2f} (goal ≥ {GOAL_32}: {verdict})"
        )
    live = results.get(("live", 32))
    if grpc and live:
        # steadier than the ratio to REST on a loaded machine: both are the same gRPC stack
        lines.append(
            f"gRPC ModelInfer / ServerLive (the no-work ceiling) at 32 connections: "
            f"{grpc.rps / live.rps:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is kept")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    text = table(measure(args.duration, args.repeat))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
