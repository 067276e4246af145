"""The canary-analysis lab, shared by the cluster tests and ``make bench-rollout``: the
operator against the real API server (told where Prometheus listens), version 1 served
as stable, and the parts that play the pods: real ``kubeloop serve`` processes, a real
Prometheus scraping them through the documented job, and traffic to both."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from kubetest import wait_for
from monitoring import Daemon, prometheus, rules_file
from operator_harness import Cluster, free_port, operating
from retrain_helpers import RetrainOperator
from test_drift_loop import MODEL, publish, run_server, send

from kubeloop.devcluster.monitoring import discovered_pod, serving_job

MD = "guarded"
SERVED = (
    'sum(increase(kubeloop_requests_total{namespace="{{ namespace }}",'
    'model_deployment="{{ deployment }}",version="{{ canaryVersion }}"}[10s]))'
    ' / (sum(increase(kubeloop_requests_total{namespace="{{ namespace }}",'
    'model_deployment="{{ deployment }}",version="{{ stableVersion }}"}[10s])) > 0)'
)
FAILURE_LIMIT = 3


def guarded(interval: str = "2s", steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ModelDeployment whose canary steps (one by default) are gated on error rate,
    prediction shift and a user query."""
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "modelName": MODEL,
            "canary": {
                "steps": steps or [{"weight": 50, "pause": "1s"}],
                "analysis": {
                    "interval": interval,
                    "failureLimit": FAILURE_LIMIT,
                    "minRequests": 5,
                    "metrics": [
                        {"name": "errors", "builtin": "errorRate", "max": 0.05, "window": "10s"},
                        {"name": "shift", "builtin": "predictionShift", "max": 0.1,
                         "window": "10s"},
                        # a user query: passes only when its placeholders were substituted
                        {"name": "served", "min": 0.5, "window": "10s", "query": SERVED},
                    ],
                },
            },
        },
    }  # fmt: skip


class Traffic:
    """The same rows sent to the stable and the canary server until stopped (a thread)."""

    def __init__(self, servers: list[Any], rows: pd.DataFrame) -> None:
        self._servers, self._rows = servers, rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for server in self._servers:
                    send(server, self._rows, batch=10)
                self._stop.wait(0.2)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass
class Rollout:
    """The running parts of one test."""

    cluster: Cluster
    operator: RetrainOperator
    stack: ExitStack
    workdir: Path
    prometheus_port: int

    def status(self) -> dict[str, Any]:
        return self.cluster.status("ModelDeployment", MD)

    def analysis(self) -> dict[str, Any]:
        return dict(((self.status().get("canary") or {}).get("analysis")) or {})

    def pod(self, role: str) -> dict[str, Any]:
        selector = f"kubeloop.io/model-deployment={MD},kubeloop.io/role={role}"
        return wait_for(
            lambda: next(iter(self.cluster.list("Pod", "v1", selector)), None),
            f"the {role} serving pod",
            timeout=60,
            state=self.status,
        )

    def serve(self, role: str) -> tuple[Any, dict[str, Any]]:
        """Play the kubelet for the ``role`` pod: its process on loopback."""
        pod = self.pod(role)
        server = run_server(pod)
        self.stack.callback(server.stop)
        return server, pod

    def scrape(self, targets: list[tuple[Any, dict[str, Any]]]) -> Daemon:
        """Prometheus on the port the operator was told, scraping the serving processes and
        the operator."""
        static = [discovered_pod(s.url.removeprefix("http://"), pod) for s, pod in targets]
        rules = rules_file(self.workdir)
        operator = {  # the operator's own metrics, as a ServiceMonitor would scrape them
            "job_name": "kubeloop-operator",
            "static_configs": [{"targets": [f"127.0.0.1:{self.operator.metrics_port}"]}],
        }
        prom = prometheus(
            self.workdir, rules, free_port(), [serving_job(static_configs=static), operator],
            port=self.prometheus_port,
        )  # fmt: skip
        self.stack.callback(prom.stop)
        return prom

    def rollouts(self) -> dict[str, float]:
        """kubeloop_rollouts_total by result, from the operator's /metrics."""
        url = f"http://127.0.0.1:{self.operator.metrics_port}/metrics"
        found = re.findall(r'^kubeloop_rollouts_total\{result="(\w+)"\} (\S+)$',
                           httpx.get(url, timeout=5).text, re.M)  # fmt: skip
        return {k: float(v) for k, v in found}

    def warnings(self, reason: str) -> list[str]:
        """The messages of the Events of that reason on the ModelDeployment."""
        events = self.cluster.core.list_namespaced_event(
            self.cluster.namespace, field_selector=f"involvedObject.name={MD},reason={reason}"
        )
        return [e.message for e in events.items]


def train(data_csv: Path, out: Path, flip: bool = False) -> Path:
    """A LogisticRegression from the real trainer; with ``flip``, on inverted labels (it
    predicts the other class for most rows)."""
    csv = data_csv
    if flip:
        frame = pd.read_csv(data_csv)
        frame["target"] = 1 - frame["target"]
        csv = out.with_name(f"{out.name}.csv")
        frame.to_csv(csv, index=False)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("kubeloop")), "train", "--data", str(csv),
         "--target", "target", "--task", "classification", "--estimator", "LogisticRegression",
         "--params", '{"max_iter": 2000}', "--name", MODEL, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    return out


@contextmanager
def lab(
    kubeconfig: str,
    api_client: Any,
    namespace: str,
    workdir: Path,
    model_dir: Path,
    spec: dict[str, Any] | None = None,
) -> Iterator[Rollout]:
    """The operator (told where Prometheus will listen) and version 1 served as stable
    under ``spec`` (default: :func:`guarded`)."""
    cluster = Cluster(api_client, namespace)
    store = workdir / "store"
    store.mkdir()
    proc = RetrainOperator(kubeconfig, namespace, store, workdir / "operator.log")
    port = free_port()
    proc.env["KUBELOOP_PROMETHEUS_URL"] = f"http://127.0.0.1:{port}"
    with ExitStack() as stack, operating(proc, api_client) as operator:
        publish(cluster, model_dir, store, 1)
        md = guarded()
        if spec is not None:
            md["spec"] = spec
        cluster.apply(md)
        wait_for(
            lambda: cluster.status("ModelDeployment", MD).get("stableVersion") == 1,
            "version 1 to be stable",
            state=lambda: cluster.status("ModelDeployment", MD),
        )
        yield Rollout(cluster, operator, stack, workdir, port)


@contextmanager
def canary_of(run: Rollout, model: Path, rows: pd.DataFrame) -> Iterator[Daemon]:
    """Version 2 published from ``model``; both pods served, scraped, and sent traffic."""
    publish(run.cluster, model, run.workdir / "store", 2)
    wait_for(lambda: run.status().get("canaryVersion") == 2, "the canary to start",
             state=run.status)  # fmt: skip
    targets = [run.serve("stable"), run.serve("canary")]
    with Traffic([t[0] for t in targets], rows) as traffic:
        yield run.scrape(targets)
    assert traffic.error is None, traffic.error
