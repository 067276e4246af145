"""Operator at scale: many ModelDeployments and TrainingJobs created at once on a kwok cluster.

Measures the time until every object reaches its steady state (ModelDeployment
``phase=Serving`` with ready kwok pods; TrainingJob ``phase=Running`` with its Job
created), the API requests the whole cluster served per object (apiserver's
``apiserver_request_total``, all clients), and the operator's CPU time and peak
memory. Not a test: run with ``make bench-operator``.

    python bench/operator/bench_operator.py [--deployments 500] [--trainingjobs 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from kubeloop.devcluster.cluster import DevCluster

ROOT = Path(__file__).resolve().parents[2]
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
GV = "kubeloop.io/v1alpha1"
NS = "bench"


def request_total(kubeconfig: str) -> float:
    text = subprocess.run(
        [kubectl(), "--kubeconfig", kubeconfig, "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^apiserver_request_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    )


def kubectl() -> str:
    bin_dir = subprocess.run(
        [str(ROOT / "hack" / "toolchain.sh"), "--print-dir", "kubernetes"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return str(Path(bin_dir) / "kubectl")


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(hwm.group(1)) * 1024 if hwm else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--trainingjobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    existing = os.environ.get("KUBELOOP_TEST_KUBECONFIG")
    cluster = None if existing else DevCluster("bench")
    kubeconfig = existing or str(cluster.up(nodes=args.nodes))  # type: ignore[union-attr]
    config.load_kube_config(kubeconfig)
    api = client.ApiClient()
    dyn = DynamicClient(api)
    work = Path(tempfile.mkdtemp(prefix="kubeloop-bench-"))
    operator: subprocess.Popen[bytes] | None = None
    try:
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            res = dyn.resources.get(
                api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
            )
            res.server_side_apply(body=crd, field_manager="bench", force_conflicts=True)
        core = client.CoreV1Api(api)
        if NS not in [n.metadata.name for n in core.list_namespace().items]:
            core.create_namespace({"metadata": {"name": NS}})
        wait_established(dyn)
        crs = {
            k: dyn.resources.get(api_version=GV, kind=k)
            for k in ("Dataset", "TrainingJob", "ModelVersion", "ModelDeployment")
        }

        # Prerequisites, written as the trainer would have left them.
        artifact = work / "model.onnx"
        artifact.write_bytes(b"bench artifact")
        crs["Dataset"].create(
            namespace=NS,
            body={
                "apiVersion": GV,
                "kind": "Dataset",
                "metadata": {"name": "data"},
                "spec": {"source": {"uri": "file:///bench/data.csv"}},
            },
        )
        digest = "sha256:" + "0" * 64
        crs["Dataset"].status.patch(
            namespace=NS,
            name="data",
            content_type="application/merge-patch+json",
            body={
                "status": {
                    "version": digest,
                    "rows": 1,
                    "snapshotUri": "file:///bench/data.csv",
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "Bench",
                            "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
            },
        )
        crs["ModelVersion"].create(
            namespace=NS,
            body={
                "apiVersion": GV,
                "kind": "ModelVersion",
                "metadata": {"name": "bench-v1", "labels": {"kubeloop.io/model": "bench"}},
                "spec": {
                    "modelName": "bench",
                    "version": 1,
                    "task": "classification",
                    "artifact": {
                        "uri": artifact.as_uri(),
                        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                    },
                },
            },
        )

        log = (work / "operator.log").open("wb")
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "KUBELOOP_METRICS_PORT": "0",
            "KUBELOOP_ARTIFACT_ROOT": (work / "store").as_uri(),
        }
        operator = subprocess.Popen(
            [KUBELOOP, "operator", "-n", NS, "--liveness", ""],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait(
            lambda: ready(crs["ModelVersion"].get(namespace=NS, name="bench-v1").to_dict()),
            "bench-v1 Ready",
            120,
        )

        before_requests = request_total(kubeconfig)
        before_cpu, _ = proc_usage(operator.pid)
        started = time.monotonic()

        def make_md(i: int) -> None:
            crs["ModelDeployment"].create(
                namespace=NS,
                body={
                    "apiVersion": GV,
                    "kind": "ModelDeployment",
                    "metadata": {"name": f"md-{i}"},
                    "spec": {"modelName": "bench", "replicas": 1},
                },
            )

        def make_tj(i: int) -> None:
            crs["TrainingJob"].create(
                namespace=NS,
                body={
                    "apiVersion": GV,
                    "kind": "TrainingJob",
                    "metadata": {"name": f"tj-{i}"},
                    "spec": {
                        "datasetRef": {"name": "data"},
                        "task": "classification",
                        "target": "y",
                        "modelName": "bench",
                        "estimator": {"className": "LogisticRegression"},
                    },
                },
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make_md, range(args.deployments)))
            list(pool.map(make_tj, range(args.trainingjobs)))
        created = time.monotonic() - started

        def settled() -> tuple[int, int]:
            mds = crs["ModelDeployment"].get(namespace=NS).to_dict()["items"]
            tjs = crs["TrainingJob"].get(namespace=NS).to_dict()["items"]
            serving = sum((m.get("status") or {}).get("phase") == "Serving" for m in mds)
            running = sum((t.get("status") or {}).get("phase") == "Running" for t in tjs)
            return serving, running

        deadline = started + args.timeout
        while True:
            serving, running = settled()
            if serving == args.deployments and running == args.trainingjobs:
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"timed out: {serving}/{args.deployments} serving, "
                    f"{running}/{args.trainingjobs} running"
                )
            time.sleep(2)
        elapsed = time.monotonic() - started
        cpu, peak = proc_usage(operator.pid)
        requests = request_total(kubeconfig) - before_requests
        objects = args.deployments + args.trainingjobs
        rows = [
            (
                "objects created (ModelDeployments + TrainingJobs)",
                f"{args.deployments} + {args.trainingjobs}",
            ),
            ("time to create them (client side)", f"{created:.1f} s"),
            ("time until all reached steady state", f"{elapsed:.1f} s"),
            ("steady-state objects per second", f"{objects / elapsed:.1f}"),
            ("API requests served per object (all clients)", f"{requests / objects:.1f}"),
            ("operator CPU time per object", f"{(cpu - before_cpu) / objects * 1000:.1f} ms"),
            ("operator peak memory (RSS)", f"{peak / 2**20:.0f} MiB"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
        for name, value in rows:
            print(f"| {name:<{width}} | {value} |")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:  # kopf stops its many timers slowly
                operator.kill()
                operator.wait()
        if cluster is not None:
            cluster.down()


def ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def wait(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def wait_established(dyn: DynamicClient) -> None:
    res = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")

    def established() -> bool:
        crds = [c for c in res.get().to_dict()["items"] if c["spec"]["group"] == "kubeloop.io"]
        return len(crds) == 4 and all(
            any(
                x["type"] == "Established" and x["status"] == "True"
                for x in (c.get("status") or {}).get("conditions") or []
            )
            for c in crds
        )

    wait(established, "CRDs Established", 60)


if __name__ == "__main__":
    sys.exit(main())
