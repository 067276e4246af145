"""Serving benchmark: kubeloop serve (plain, and with every feature on) vs its peers
MLServer 1.7 (mlserver-sklearn) and KServe 0.21 (its sklearn runtime), against an
honest ceiling: a bare ASGI + onnxruntime app on the same HTTP stack kubeloop uses
(uvicorn with uvloop and httptools, orjson). Driven by wrk at concurrency 1 and 32,
over V2 (``/v2/models/cancer/infer``) and V1 (``/v1/models/cancer:predict``; MLServer
has no V1). A last table measures inference p99 while a flood of 1 MiB feedback
bodies hits the same server.

    make bench-serving                      # installs wrk and the peers' venvs first
    .venv/bin/python bench/serving/run.py --duration 10

Loopback only; every server runs alone, one worker process, while it is measured.
Not a timed test: it prints side-by-side tables (and writes them with --out).
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
CACHE = Path.home() / ".cache/kubeloop"
BENCH_VENV = Path(os.environ.get("KUBELOOP_BENCH_VENV", CACHE / "bench-venv"))
KSERVE_VENV = Path(os.environ.get("KUBELOOP_KSERVE_VENV", CACHE / "kserve-venv"))
MODELS = {
    "logreg": ("LogisticRegression", {"max_iter": 5000}),
    "forest": ("RandomForestClassifier", {"n_estimators": 100, "random_state": 0}),
}
SERVERS = ("ceiling", "kubeloop", "kubeloop-full", "mlserver", "kserve")
PEERS = ("mlserver", "kserve")
PATHS = {"v2": "/v2/models/cancer/infer", "v1": "/v1/models/cancer:predict"}
PROTOCOLS = {server: ("v2", "v1") for server in SERVERS} | {"mlserver": ("v2",)}
CONNECTIONS = (1, 32)
FEEDBACK_PATH = "/v2/models/cancer/feedback"
FEEDBACK_BYTES = 1024 * 1024  # the largest feedback body a server takes
FLOOD_CONNECTIONS = 4
TOKEN = "bench-token-0123456789abcdef"
#: kubeloop-full's goals: req/s vs the ceiling at 32 connections (at least), p50 vs the
#: ceiling at 1 connection (at most), inference p99 with the feedback flood vs without (at most)
GOALS = {"rps_32": 1.0, "p50_1": 1.1, "flood_p99": 2.0}


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


def write_bodies(work: Path, row: list[float]) -> dict[str, Path]:
    """The request bodies wrk sends: one V2 2-D tensor, one V1 row, and the 1 MiB
    feedback body (unknown request ids, the most entries that fit, padded to the size)."""
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    docs = {"v2": {"inputs": [tensor]}, "v1": {"instances": [row]}}
    paths = {}
    for name, doc in docs.items():
        paths[name] = work / f"{name}.json"
        paths[name].write_bytes(json.dumps(doc).encode())
    entry = len(b'{"id": "flood-0000000", "truth": 1}, ')
    entries = [{"id": f"flood-{i:07d}", "truth": 1} for i in range(FEEDBACK_BYTES // entry - 1)]
    feedback = json.dumps({"feedback": entries}).encode()
    assert len(feedback) <= FEEDBACK_BYTES, len(feedback)
    paths["feedback"] = work / "feedback.json"
    paths["feedback"].write_bytes(feedback + b" " * (FEEDBACK_BYTES - len(feedback)))
    return paths


def train_kubeloop(csv: Path, estimator: str, params: dict[str, object], out: Path) -> None:
    subprocess.run(
        [str(BIN / "kubeloop"), "train", "--data", str(csv), "--target", "target",
         "--task", "classification", "--estimator", estimator,
         "--params", json.dumps(params), "--out", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


def train_sklearn(
    venv: Path, csv: Path, estimator: str, params: dict[str, object], out: Path
) -> None:
    """The joblib model a peer serves, trained by the peer's own venv."""
    subprocess.run(
        [str(venv / "bin/python"), str(HERE / "mlserver_model.py"), str(csv), "target",
         estimator, json.dumps(params), str(out), "cancer"],
        check=True, timeout=600,
    )  # fmt: skip


def full_features_env(work: Path) -> dict[str, str]:
    """kubeloop serve with every feature on: validation (always), drift, the prediction
    log to a file, a bearer token, and a canary routed at 0 %."""
    token = work / "token"
    token.write_text(TOKEN + "\n")
    routing = work / "routing.json"
    routing.write_text(json.dumps({"canary_url": f"http://127.0.0.1:{free_port()}", "weight": 0}))
    return {
        "KUBELOOP_SERVING_DRIFT": "true",
        "KUBELOOP_SERVING_PREDICTION_LOG": str(work / "predictions.log"),
        "KUBELOOP_SERVING_TOKEN_FILE": str(token),
        "KUBELOOP_SERVING_ROUTING_FILE": str(routing),
    }


def command(kind: str, model_dir: Path, port: int, work: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that start ``kind`` on ``port``."""
    if kind in ("kubeloop", "kubeloop-full"):
        cmd = [str(BIN / "kubeloop"), "serve", "--model", str(model_dir), "--name", "cancer",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        env = {"KUBELOOP_SERVING_LOG_LEVEL": "warning"}
        return cmd, env | (full_features_env(work) if kind == "kubeloop-full" else {})
    if kind == "ceiling":
        cmd = [str(BIN / "python"), "-m", "uvicorn", "bench.serving.ceiling:app", "--host",
               "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        return cmd, {"BENCH_MODEL": str(model_dir)}
    if kind == "kserve":
        cmd = [str(KSERVE_VENV / "bin/python"), str(HERE / "kserve_model.py"), "--model_dir",
               str(model_dir), "--model_name", "cancer", "--http_port", str(port),
               "--configure_logging", "false"]  # fmt: skip
        return cmd, {}
    (model_dir.parent / "settings.json").write_text(
        json.dumps(
            {"parallel_workers": 0, "http_port": port, "grpc_port": free_port(),
             "metrics_port": free_port(), "host": "127.0.0.1", "debug": False}
        )
    )  # fmt: skip
    return [str(BENCH_VENV / "bin/mlserver"), "start", str(model_dir.parent)], {}


def token_for(kind: str) -> str:
    return TOKEN if kind == "kubeloop-full" else ""


@contextlib.contextmanager
def running(kind: str, model_dir: Path, port: int, bodies: dict[str, Path]) -> Iterator[str]:
    """``kind`` serving on ``port`` until the block ends; yields its base URL once it
    answers a V2 inference with 200."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    cmd, extra = command(kind, model_dir, port, bodies["v2"].parent)
    logfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env | extra, stdout=logfile, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"content-type": "application/json"}
    if token_for(kind):
        headers["authorization"] = f"Bearer {token_for(kind)}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                logfile.seek(0)
                raise RuntimeError(f"{kind} exited:\n{logfile.read().decode()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                body = bodies["v2"].read_bytes()
                r = httpx.post(base + PATHS["v2"], content=body, headers=headers)
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} not answering 200 at {base} after 120s")
            time.sleep(0.2)
        yield base
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


def wrk_command(url: str, connections: int, seconds: int) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
            str(HERE / "post.lua"), url]  # fmt: skip


def wrk_env(body_file: Path, token: str) -> dict[str, str]:
    return {**os.environ, "BENCH_BODY": str(body_file), "BENCH_TOKEN": token}


def parse_wrk(out: str) -> Cell:
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


def wrk(url: str, body_file: Path, connections: int, seconds: int, token: str = "") -> Cell:
    out = subprocess.run(
        wrk_command(url, connections, seconds), env=wrk_env(body_file, token),
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    return parse_wrk(out)


def flooded(base: str, bodies: dict[str, Path], protocol: str, c: int, seconds: int,
            token: str) -> tuple[Cell, Cell]:  # fmt: skip
    """Inference measured while ``FLOOD_CONNECTIONS`` connections post 1 MiB feedback
    bodies to the same server: (inference, feedback flood)."""
    flood = subprocess.Popen(
        wrk_command(base + FEEDBACK_PATH, FLOOD_CONNECTIONS, seconds + 2),
        env=wrk_env(bodies["feedback"], token), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)  # the flood under way before inference is measured
        cell = wrk(base + PATHS[protocol], bodies[protocol], c, seconds, token)
        out, _ = flood.communicate(timeout=seconds + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    return cell, parse_wrk(out)


Key = tuple[str, str, str, int]  # model, protocol, server (or "flood"/"feedback"), connections


def keep_best(results: dict[Key, Cell], key: Key, cell: Cell) -> None:
    best = results.get(key)
    if best is None or cell.rps > best.rps:
        results[key] = cell


def measure(kind: str, base: str, bodies: dict[str, Path], model: str, seconds: int,
            results: dict[Key, Cell]) -> None:  # fmt: skip
    """Every protocol ``kind`` speaks at each concurrency (and, for kubeloop-full, the
    same again under the feedback flood)."""
    token = token_for(kind)
    for protocol in PROTOCOLS[kind]:
        url = base + PATHS[protocol]
        wrk(url, bodies[protocol], 8, 2, token)  # warm-up, not recorded
        for c in CONNECTIONS:
            cell = wrk(url, bodies[protocol], c, seconds, token)
            keep_best(results, (model, protocol, kind, c), cell)
            log(f"{model} {protocol} {kind} c={c}: p50 {cell.p50_ms:.3f} ms, "
                f"p99 {cell.p99_ms:.3f} ms, {cell.rps:,.0f} req/s")  # fmt: skip
            if kind != "kubeloop-full":
                continue
            cell, flood = flooded(base, bodies, protocol, c, seconds, token)
            keep_best(results, (model, protocol, "flood", c), cell)
            keep_best(results, (model, protocol, "feedback", c), flood)
            log(f"{model} {protocol} {kind} c={c} under the feedback flood: p99 "
                f"{cell.p99_ms:.3f} ms; feedback {flood.rps:,.1f} req/s, "
                f"{flood.errors} non-2xx")  # fmt: skip


def ratio(a: float, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if b else "-"


def main_table(results: dict[Key, Cell]) -> list[str]:
    lines = [
        "| model | protocol | connections | server | p50 (ms) | p99 (ms) | req/s "
        "| req/s vs ceiling | p50 vs ceiling | req/s vs MLServer | req/s vs KServe |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, protocol, c in sorted({(k[0], k[1], k[3]) for k in results}):
        ceil = results.get((model, protocol, "ceiling", c))
        peers = {p: results.get((model, protocol, p, c)) for p in PEERS}
        for server in SERVERS:
            cell = results.get((model, protocol, server, c))
            if cell is None:
                continue
            mls, ks = (peers[p].rps if peers[p] else None for p in PEERS)
            err = f" ({cell.errors} errors)" if cell.errors else ""
            lines.append(
                f"| {model} | {protocol} | {c} | {server} | {cell.p50_ms:.3f} "
                f"| {cell.p99_ms:.3f} | {cell.rps:,.0f}{err} "
                f"| {ratio(cell.rps, ceil.rps if ceil else None)} "
                f"| {ratio(cell.p50_ms, ceil.p50_ms if ceil else None)} "
                f"| {ratio(cell.rps, mls, 1)} | {ratio(cell.rps, ks, 1)} |"
            )
    return lines


def flood_table(results: dict[Key, Cell]) -> list[str]:
    lines = [
        "",
        f"Feedback flood: kubeloop-full inference while {FLOOD_CONNECTIONS} connections post "
        f"{FEEDBACK_BYTES // 1024} KiB feedback bodies (goal: p99 at most "
        f"{GOALS['flood_p99']}x without the flood)",
        "",
        "| model | protocol | connections | p99 without (ms) | p99 with flood (ms) | ratio "
        "| req/s with flood | feedback req/s | feedback non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, protocol, server, c), cell in sorted(results.items()):
        quiet = results.get((model, protocol, "kubeloop-full", c))
        feedback = results.get((model, protocol, "feedback", c))
        if server != "flood" or quiet is None or feedback is None:
            continue
        lines.append(
            f"| {model} | {protocol} | {c} | {quiet.p99_ms:.3f} | {cell.p99_ms:.3f} "
            f"| {ratio(cell.p99_ms, quiet.p99_ms)} | {cell.rps:,.0f} "
            f"| {feedback.rps:,.1f} | {feedback.errors} |"
        )
    return lines


def goals(results: dict[Key, Cell]) -> list[str]:
    """kubeloop-full against its goals, per model and protocol."""
    lines = ["", "Goals for kubeloop-full (every feature on):", ""]
    for model, protocol in sorted({(k[0], k[1]) for k in results}):

        def get(server: str, c: int) -> Cell | None:
            return results.get((model, protocol, server, c))  # noqa: B023 - used at once

        full32, ceil32 = get("kubeloop-full", 32), get("ceiling", 32)
        full1, ceil1 = get("kubeloop-full", 1), get("ceiling", 1)
        if full32 and ceil32:
            got = full32.rps / ceil32.rps
            lines.append(f"- {model} {protocol}: req/s at 32 connections {got:.2f}x the "
                         f"ceiling (goal >= {GOALS['rps_32']}x): "
                         f"{'met' if got >= GOALS['rps_32'] else 'NOT met'}")  # fmt: skip
        if full1 and ceil1:
            got = full1.p50_ms / ceil1.p50_ms
            lines.append(f"- {model} {protocol}: p50 at 1 connection {got:.2f}x the ceiling "
                         f"(goal <= {GOALS['p50_1']}x): "
                         f"{'met' if got <= GOALS['p50_1'] else 'NOT met'}")  # fmt: skip
        for c in CONNECTIONS:
            flood, quiet = get("flood", c), get("kubeloop-full", c)
            if flood and quiet:
                got = flood.p99_ms / quiet.p99_ms
                lines.append(f"- {model} {protocol}: p99 at {c} connection(s) under the "
                             f"feedback flood {got:.2f}x (goal <= {GOALS['flood_p99']}x): "
                             f"{'met' if got <= GOALS['flood_p99'] else 'NOT met'}")  # fmt: skip
    return lines


def table(results: dict[Key, Cell]) -> str:
    return "\n".join(main_table(results) + flood_table(results) + goals(results))


def check_tools(servers: list[str]) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-serving installs it)")
    if "mlserver" in servers and not (BENCH_VENV / "bin/mlserver").exists():
        raise SystemExit(f"no MLServer in {BENCH_VENV} (make bench-serving creates it)")
    if "kserve" in servers and not (KSERVE_VENV / "bin/python").exists():
        raise SystemExit(f"no KServe in {KSERVE_VENV} (make bench-serving creates it)")


def model_dirs(work: Path, model: str, servers: list[str], csv: Path) -> dict[str, Path]:
    """Each server's model directory for ``model``: the ONNX one kubeloop trains (the
    ceiling serves it too) and the peers' joblib ones, trained in their venvs."""
    estimator, params = MODELS[model]
    onnx_dir = work / model / "onnx"
    log(f"training {model} ({estimator})")
    train_kubeloop(csv, estimator, params, onnx_dir)
    dirs = {server: onnx_dir for server in servers}
    for peer, venv in (("mlserver", BENCH_VENV), ("kserve", KSERVE_VENV)):
        if peer in servers:
            dirs[peer] = work / model / peer / "cancer"
            train_sklearn(venv, csv, estimator, params, dirs[peer])
    return dirs


def run(args: argparse.Namespace) -> dict[Key, Cell]:
    servers = args.servers.split(",")
    check_tools(servers)
    results: dict[Key, Cell] = {}
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        work = Path(tmp)
        csv, row = write_data(work)
        bodies = write_bodies(work, row)
        for model in args.models.split(","):
            dirs = model_dirs(work, model, servers, csv)
            for _ in range(args.repeat):
                for server in servers:
                    with running(server, dirs[server], free_port(), bodies) as base:
                        measure(server, base, bodies, model, args.duration, results)
    return results


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
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args()
    text = table(run(args))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
