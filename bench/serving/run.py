"""Serving benchmark: kubeloop serve vs MLServer 1.7 (mlserver-sklearn) vs a bare
ASGI + onnxruntime ceiling, driven by wrk at concurrency 1 and 32.

    make bench-serving                      # installs wrk and the bench venv first
    .venv/bin/python bench/serving/run.py --duration 10

Loopback only; every server runs alone, one worker process, while it is measured.
Not a timed test: it prints a side-by-side table (and writes it with --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BENCH_VENV = Path(os.environ.get("KUBELOOP_BENCH_VENV", Path.home() / ".cache/kubeloop/bench-venv"))
MODELS = {
    "logreg": ("LogisticRegression", {"max_iter": 5000}),
    "forest": ("RandomForestClassifier", {"n_estimators": 100, "random_state": 0}),
}
SERVERS = ("kubeloop", "mlserver", "ceiling")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def write_data(work: Path) -> tuple[Path, list[float]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    csv = work / "cancer.csv"
    frame.to_csv(csv, index=False)
    return csv, [float(v) for v in frame.drop(columns=["target"]).iloc[0]]


def train_kubeloop(csv: Path, estimator: str, params: dict[str, object], out: Path) -> None:
    subprocess.run(
        [str(BIN / "kubeloop"), "train", "--data", str(csv), "--target", "target",
         "--task", "classification", "--estimator", estimator,
         "--params", json.dumps(params), "--out", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


def train_mlserver(csv: Path, estimator: str, params: dict[str, object], out: Path) -> None:
    subprocess.run(
        [str(BENCH_VENV / "bin/python"), str(HERE / "mlserver_model.py"), str(csv), "target",
         estimator, json.dumps(params), str(out), "cancer"],
        check=True, timeout=600,
    )  # fmt: skip


@contextlib.contextmanager
def running(kind: str, model_dir: Path, port: int, body: bytes) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    if kind == "kubeloop":
        cmd = [str(BIN / "kubeloop"), "serve", "--model", str(model_dir), "--name", "cancer",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        env["KUBELOOP_SERVING_LOG_LEVEL"] = "warning"
    elif kind == "ceiling":
        cmd = [str(BIN / "python"), "-m", "uvicorn", "bench.serving.ceiling:app", "--host",
               "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        env["BENCH_MODEL"] = str(model_dir)
    else:
        (model_dir.parent / "settings.json").write_text(
            json.dumps(
                {"parallel_workers": 0, "http_port": port, "grpc_port": free_port(),
                 "metrics_port": free_port(), "host": "127.0.0.1", "debug": False}
            )
        )  # fmt: skip
        cmd = [str(BENCH_VENV / "bin/mlserver"), "start", str(model_dir.parent)]
    logfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v2/models/cancer/infer"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                logfile.seek(0)
                raise RuntimeError(f"{kind} exited:\n{logfile.read().decode()[-3000:]}")
            try:
                r = httpx.post(url, content=body, headers={"content-type": "application/json"})
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} not answering 200 at {url} after 120s")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()


@dataclass
class Cell:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, body_file: Path, connections: int, seconds: int) -> Cell:
    env = {**os.environ, "BENCH_BODY": str(body_file)}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         str(HERE / "post.lua"), url],
        env=env, capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert rps, out
    return Cell(
        latency("50"), latency("99"), float(rps.group(1)), int(errors.group(1)) if errors else 0
    )


def table(results: dict[tuple[str, str, int], Cell]) -> str:
    lines = [
        "| model | concurrency | server | p50 (ms) | p99 (ms) | req/s | req/s vs ceiling "
        "| req/s vs MLServer | p50 vs ceiling |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        for c in (1, 32):
            ceil = results.get((model, "ceiling", c))
            mls = results.get((model, "mlserver", c))
            for server in SERVERS:
                cell = results.get((model, server, c))
                if cell is None:
                    continue
                vs_ceil = f"{cell.rps / ceil.rps:.2f}x" if ceil else "-"
                vs_mls = f"{cell.rps / mls.rps:.1f}x" if mls else "-"
                p50 = f"{cell.p50_ms / ceil.p50_ms:.2f}x" if ceil else "-"
                err = f" ({cell.errors} errors)" if cell.errors else ""
                lines.append(
                    f"| {model} | {c} | {server} | {cell.p50_ms:.3f} | {cell.p99_ms:.3f} "
                    f"| {cell.rps:,.0f}{err} | {vs_ceil} | {vs_mls} | {p50} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every server this many times, alternating, and keep each cell's least "
        "disturbed run (highest req/s) — for shared machines",
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-serving installs it)")
    servers = args.servers.split(",")
    if "mlserver" in servers and not (BENCH_VENV / "bin/mlserver").exists():
        raise SystemExit(f"no MLServer in {BENCH_VENV} (make bench-serving creates it)")
    results: dict[tuple[str, str, int], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        work = Path(tmp)
        csv, row = write_data(work)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row}
                ]
            }
        ).encode()
        body_file = work / "body.json"
        body_file.write_bytes(body)
        for model in args.models.split(","):
            estimator, params = MODELS[model]
            onnx_dir = work / model / "onnx"
            log(f"training {model} ({estimator})")
            train_kubeloop(csv, estimator, params, onnx_dir)
            if "mlserver" in servers:
                train_mlserver(csv, estimator, params, work / model / "mlserver" / "cancer")
            for _ in range(args.repeat):
                for server in servers:
                    model_dir = (
                        work / model / "mlserver" / "cancer" if server == "mlserver" else onnx_dir
                    )
                    with running(server, model_dir, free_port(), body) as url:
                        wrk(url, body_file, 8, 2)  # warm-up, not recorded
                        for c in (1, 32):
                            cell = wrk(url, body_file, c, args.duration)
                            best = results.get((model, server, c))
                            if best is None or cell.rps > best.rps:
                                results[(model, server, c)] = cell
                            log(f"{model} {server} c={c}: p50 {cell.p50_ms:.3f} ms, "
                                f"p99 {cell.p99_ms:.3f} ms, {cell.rps:,.0f} req/s")  # fmt: skip
    text = table(results)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
