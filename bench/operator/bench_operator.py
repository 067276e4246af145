"""Operator at scale: many ModelDeployments and TrainingJobs created at once on a kwok cluster.

Measures the time until every object reaches its steady state (ModelDeployment
``phase=Serving`` with ready kwok pods; TrainingJob ``phase=Running`` with its Job
created), the API requests the whole cluster served per object (apiserver's
``apiserver_request_total``, all clients), the requests the operator's own API client
made (its ``kubeloop_operator_api_requests_total``: every read and write of children and
status; kopf's watches and bookkeeping patches and Events are not counted), the writes
per object in one resync window after steady state (``apiserver_request_total`` of the
writing verbs, all clients), the latency from a stable Deployment turning Available to its
ModelDeployment's Ready condition turning True (both conditions' timestamps), and the
operator's CPU time and peak memory. Not a test: run with ``make bench-operator``.

    python bench/operator/bench_operator.py [--deployments 500] [--trainingjobs 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.devcluster.cluster import DevCluster

ROOT = Path(__file__).resolve().parents[2]
KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
GV = "kubeloop.io/v1alpha1"
NS = "bench"


#: The verbs of ``apiserver_request_total`` that write.
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def request_total(kubeconfig: str, verbs: tuple[str, ...] | None = None) -> float:
    """Requests the API server served (all clients), optionally only of ``verbs``."""
    text = subprocess.run(
        [kubectl(), "--kubeconfig", kubeconfig, "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0.0
    for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M):
        verb = re.search(r'verb="(\w+)"', m.group(1))
        if verbs is None or (verb is not None and verb.group(1) in verbs):
            total += float(m.group(2))
    return total


def operator_requests(port: int) -> dict[str, float] | None:
    """The operator's own count of its API requests, by label set (``verb="…",kind="…"``;
    None: an operator without the counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r"^kubeloop_operator_api_requests_total\{([^}]*)\} ([0-9.e+]+)$"
    found = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}
    return found or None


def requests_by_label(
    before: dict[str, float] | None, after: dict[str, float] | None, objects: int
) -> list[tuple[str, str]]:
    """Rows of the operator's requests per object by verb and kind, most first."""
    if after is None:
        return []
    spent = {k: v - (before or {}).get(k, 0.0) for k, v in after.items()}
    ranked = sorted(((v, k) for k, v in spent.items() if v > 0), reverse=True)
    return [(f"  {k}", f"{v / objects:.2f}") for v, k in ranked]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--trainingjobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--resync", type=float, default=10, help="the operator's resync interval (seconds)"
    )
    parser.add_argument(
        "--unrelated",
        type=int,
        default=0,
        help="ConfigMaps and as many Deployments (0 replicas) not made by the operator, "
        "created in the namespace before it starts",
    )
    return parser.parse_args()


class Bench:
    """The kubeloop resources of one cluster, in the bench namespace."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        config.load_kube_config(kubeconfig)
        self.api = client.ApiClient()
        self.dyn = DynamicClient(self.api)

    def install_crds(self) -> None:
        """The CRDs (server-side applied) and the namespace; waits until they serve."""
        res = self.dyn.resources.get(
            api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
        )
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            res.server_side_apply(body=crd, field_manager="bench", force_conflicts=True)
        core = client.CoreV1Api(self.api)
        if NS not in [n.metadata.name for n in core.list_namespace().items]:
            core.create_namespace({"metadata": {"name": NS}})
        wait_established(self.dyn)
        self.crs = {
            k: self.dyn.resources.get(api_version=GV, kind=k)
            for k in ("Dataset", "TrainingJob", "ModelVersion", "ModelDeployment")
        }

    def create(self, kind: str, name: str, spec: dict[str, Any], **meta: Any) -> None:
        body = {"apiVersion": GV, "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}
        self.crs[kind].create(namespace=NS, body=body)

    def prerequisites(self, work: Path) -> None:
        """A Ready Dataset and a ModelVersion, written as the trainer would have left them."""
        artifact = work / ArtifactLayout.MODEL
        artifact.write_bytes(b"bench artifact")
        self.create("Dataset", "data", {"source": {"uri": "file:///bench/data.csv"}})
        self.crs["Dataset"].status.patch(
            namespace=NS,
            name="data",
            content_type="application/merge-patch+json",
            body={"status": dataset_status()},
        )
        self.create(
            "ModelVersion",
            "bench-v1",
            {
                "modelName": "bench",
                "version": 1,
                "task": "classification",
                "artifact": {
                    "uri": artifact.as_uri(),
                    "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                },
                # named here, so no inspection Job (which kwok would never run) reads them
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
            },
            labels={"kubeloop.io/model": "bench"},
        )

    def start_operator(self, work: Path, resync: float) -> subprocess.Popen[bytes]:
        """The operator on the bench namespace, once bench-v1 is Ready by its hand."""
        log = (work / "operator.log").open("wb")
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "KUBELOOP_METRICS_PORT": str(self.metrics_port),
            "KUBELOOP_RESYNC_SECONDS": str(resync),
            "KUBELOOP_ARTIFACT_ROOT": (work / "store").as_uri(),
        }
        operator = subprocess.Popen(
            [KUBELOOP, "operator", "-n", NS, "--liveness", ""],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(
                lambda: ready(
                    self.crs["ModelVersion"].get(namespace=NS, name="bench-v1").to_dict()
                ),
                "bench-v1 Ready",
                120,
            )
        except BaseException:
            stop(operator)  # not left running after its cluster is gone
            raise
        return operator

    def create_unrelated(self, count: int) -> None:
        """``count`` ConfigMaps and ``count`` Deployments of 0 replicas that are not the
        operator's (no managed-by label): what else lives in a busy namespace."""
        core, apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        labels = {"app": "unrelated"}
        pod = {"containers": [{"name": "c", "image": "unrelated:1"}]}

        def make(i: int) -> None:
            core.create_namespaced_config_map(
                NS, {"metadata": {"name": f"other-{i}", "labels": labels}, "data": {"k": "v" * 64}}
            )
            apps.create_namespaced_deployment(
                NS,
                {
                    "metadata": {"name": f"other-{i}", "labels": labels},
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {"app": f"other-{i}"}},
                        "template": {"metadata": {"labels": {"app": f"other-{i}"}}, "spec": pod},
                    },
                },
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(count)))

    def create_load(self, deployments: int, trainingjobs: int) -> None:
        """``deployments`` ModelDeployments and ``trainingjobs`` TrainingJobs, 8 at a time."""
        job = {
            "datasetRef": {"name": "data"},
            "task": "classification",
            "target": "y",
            "modelName": "bench",
            "estimator": {"className": "LogisticRegression"},
        }
        deployment = {"modelName": "bench", "replicas": 1}
        creations = [("ModelDeployment", f"md-{i}", deployment) for i in range(deployments)]
        creations += [("TrainingJob", f"tj-{i}", job) for i in range(trainingjobs)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: self.create(*c), creations))

    def settled(self) -> tuple[int, int]:
        """(ModelDeployments Serving, TrainingJobs Running)."""
        mds = self.crs["ModelDeployment"].get(namespace=NS).to_dict()["items"]
        tjs = self.crs["TrainingJob"].get(namespace=NS).to_dict()["items"]
        serving = sum((m.get("status") or {}).get("phase") == "Serving" for m in mds)
        running = sum((t.get("status") or {}).get("phase") == "Running" for t in tjs)
        return serving, running

    def await_steady_state(self, args: argparse.Namespace, started: float) -> None:
        deadline = started + args.timeout
        while True:
            serving, running = self.settled()
            if serving == args.deployments and running == args.trainingjobs:
                return
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"timed out: {serving}/{args.deployments} serving, "
                    f"{running}/{args.trainingjobs} running"
                )
            time.sleep(2)


def dataset_status() -> dict[str, Any]:
    return {
        "version": "sha256:" + "0" * 64,
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


def condition_time(obj: dict[str, Any], type_: str) -> float | None:
    """When the object's ``type_`` condition last turned True (epoch seconds), if it is."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            stamp = str(c.get("lastTransitionTime") or c.get("lastUpdateTime"))
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


def stage_latencies(bench: Bench) -> list[float]:
    """Per ModelDeployment: from its stable Deployment turning Available (the controller's
    timestamp) to its own Ready condition turning True (the operator's), in seconds; both
    stamps have a resolution of one second."""
    apps = client.AppsV1Api(bench.api)
    deps = apps.list_namespaced_deployment(NS, label_selector="kubeloop.io/role=stable")
    available = {}
    for dep in bench.api.sanitize_for_serialization(deps)["items"]:
        md = dep["metadata"]["labels"].get("kubeloop.io/model-deployment")
        available[md] = condition_time(dep, "Available")
    mds = bench.crs["ModelDeployment"].get(namespace=NS).to_dict()["items"]
    latencies = []
    for md in mds:
        ready, since = condition_time(md, "Ready"), available.get(md["metadata"]["name"])
        if ready is not None and since is not None:
            latencies.append(ready - since)
    return sorted(latencies)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def steady_writes(bench: Bench, args: argparse.Namespace) -> float:
    """Writes (all clients) per object over one resync window, after 10 s to settle."""
    time.sleep(10)
    before = request_total(bench.kubeconfig, WRITE_VERBS)
    time.sleep(args.resync)
    writes = request_total(bench.kubeconfig, WRITE_VERBS) - before
    return float(writes / (args.deployments + args.trainingjobs))


def measure(
    bench: Bench, operator: subprocess.Popen[bytes], args: argparse.Namespace
) -> list[tuple[str, str]]:
    """Create the load, wait for its steady state; the table's rows."""
    before_requests = request_total(bench.kubeconfig)
    before_own = operator_requests(bench.metrics_port)
    before_cpu, _ = proc_usage(operator.pid)
    started = time.monotonic()
    bench.create_load(args.deployments, args.trainingjobs)
    created = time.monotonic() - started
    bench.await_steady_state(args, started)
    elapsed = time.monotonic() - started
    cpu, peak = proc_usage(operator.pid)
    requests = request_total(bench.kubeconfig) - before_requests
    own = operator_requests(bench.metrics_port)
    objects = args.deployments + args.trainingjobs
    writes = steady_writes(bench, args)
    lat = stage_latencies(bench)
    own_row = (
        "n/a"
        if own is None or before_own is None
        else f"{(sum(own.values()) - sum(before_own.values())) / objects:.1f}"
    )
    return [
        (
            "objects created (ModelDeployments + TrainingJobs)",
            f"{args.deployments} + {args.trainingjobs}",
        ),
        ("time to create them (client side)", f"{created:.1f} s"),
        ("time until all reached steady state", f"{elapsed:.1f} s"),
        ("steady-state objects per second", f"{objects / elapsed:.1f}"),
        ("API requests served per object (all clients)", f"{requests / objects:.1f}"),
        ("operator API requests per object (its API client)", own_row),
        (f"writes per object per resync ({args.resync:g} s, all clients)", f"{writes:.2f}"),
        (
            f"stable Deployment Available -> ModelDeployment Ready, p50 / p95 (n={len(lat)})",
            f"{percentile(lat, 50):.0f} s / {percentile(lat, 95):.0f} s (+-1 s)"
            if len(lat) > 1
            else "n/a",
        ),
        ("operator CPU time per object", f"{(cpu - before_cpu) / objects * 1000:.1f} ms"),
        ("operator peak memory (RSS)", f"{peak / 2**20:.0f} MiB"),
        (
            "unrelated ConfigMaps + Deployments in the namespace",
            f"{args.unrelated} + {args.unrelated}",
        ),
        ("operator API requests per object, by verb and kind:", ""),
        *requests_by_label(before_own, own, objects),
    ]


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


def stop(operator: subprocess.Popen[bytes]) -> None:
    operator.terminate()
    try:
        operator.wait(timeout=30)
    except subprocess.TimeoutExpired:  # kopf stops its many timers slowly
        operator.kill()
        operator.wait()


def main() -> int:
    args = parse_args()
    existing = os.environ.get("KUBELOOP_TEST_KUBECONFIG")
    cluster = None if existing else DevCluster("bench")
    kubeconfig = existing or str(cluster.up(nodes=args.nodes))  # type: ignore[union-attr]
    work = Path(tempfile.mkdtemp(prefix="kubeloop-bench-"))
    operator: subprocess.Popen[bytes] | None = None
    try:
        bench = Bench(kubeconfig)
        bench.install_crds()
        bench.prerequisites(work)
        bench.create_unrelated(args.unrelated)
        operator = bench.start_operator(work, args.resync)
        print_table(measure(bench, operator, args))
        return 0
    finally:
        if operator is not None:
            stop(operator)
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
        return len(crds) == len(list((ROOT / "crds").glob("*.yaml"))) and all(
            any(
                x["type"] == "Established" and x["status"] == "True"
                for x in (c.get("status") or {}).get("conditions") or []
            )
            for c in crds
        )

    wait(established, "CRDs Established", 60)


if __name__ == "__main__":
    sys.exit(main())
