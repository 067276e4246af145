"""``make demo`` / ``make e2e``: the whole loop on a real local node, as a user would run it.

Stages, each narrated with its duration and the command to look for yourself:
a cluster with a real node (``kubeloop cluster up --real``), the three images loaded
into its container runtime, the Helm chart installed, ``examples/`` applied (the
snapshot and trainer Jobs run as real containers), predictions through the Service,
a second version rolled out through the canary steps with the split counted in the
responses, then drifted traffic, Prometheus and Alertmanager on the host, the
operator's receiver, a retraining that runs, and its version promoted; last, a model
trained on shuffled labels is canaried under analysis and rolled back automatically.

The e2e test runs the same :class:`Demo` and checks its :class:`Summary`. Prometheus
and Alertmanager are Debian's, on loopback; Debian's Prometheus has no Kubernetes
discovery, so the demo writes the serving pods as file_sd targets (with the pod meta
labels discovery would give) and the documented relabelling does the rest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import pandas as pd
import yaml
from rich.console import Console

from kubeloop.api.base import duration_seconds
from kubeloop.devcluster import realnode
from kubeloop.devcluster.binaries import Binaries, MissingBinaryError, repo_root
from kubeloop.devcluster.cluster import ClusterError, DevCluster, cache_dir, free_ports
from kubeloop.devcluster.monitoring import (
    alertmanager_config,
    discovered_pod,
    prometheus_config,
    serving_job,
)
from kubeloop.devcluster.node import NodeConfig
from kubeloop.driftreport import DriftReport, render_html
from kubeloop.operator.alerts.rules import RuleOptions, render
from kubeloop.operator.driftreport_cli import fetch_deployment
from kubeloop.operator.kube import user_config
from kubeloop.operator.loopview import ModelLoop
from kubeloop.operator.status_cli import snapshot, view
from kubeloop.progress import Progress, open_progress, progress_option

T = TypeVar("T")

COMPONENTS = ("operator", "trainer", "serving")
MODEL = "breast-cancer"
RELEASE = "kubeloop"
FEATURES_SHIFTED = ("mean radius", "mean texture", "mean perimeter", "mean area")
SHUFFLED = f"{MODEL}-shuffled"
#: the canary analysis the guard stage adds to the ModelDeployment (docs/rollouts.md)
GUARD = {
    "interval": "5s",
    "failureLimit": 2,
    "minRequests": 10,
    "metrics": [
        {"name": "errors", "builtin": "errorRate", "max": 0.05, "window": "20s"},
        {"name": "shift", "builtin": "predictionShift", "max": 0.1, "window": "20s"},
    ],
}


class DemoError(RuntimeError):
    """A stage did not finish; the message carries what it waited for and the state."""


@dataclass
class Summary:
    """What the run saw, stage by stage (the e2e test asserts on it)."""

    stages: list[tuple[str, float]] = field(default_factory=list)
    #: seconds of configured canary pauses the stages spent (rollouts walked to the end)
    paused: float = 0.0
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    predictions: list[Any] = field(default_factory=list)
    #: version -> canary weight -> responses by model_version while at that weight
    canary_split: dict[int, dict[int, Counter[str]]] = field(default_factory=dict)
    drift_score: float | None = None
    retrain_job: str | None = None
    retrain_trigger: str | None = None
    final_stable: int | None = None
    #: the guard stage: (version rolled back, the failed check) and what served afterwards
    rolled_back: tuple[int, str] | None = None
    after_rollback: Counter[str] = field(default_factory=Counter)
    #: `kubeloop status` of the demo model at the end, and the tables it printed
    loop: ModelLoop | None = None
    loop_text: str = ""
    #: `kubeloop drift-report --deployment` of the demo model at the end, and where it is
    drift_report: DriftReport | None = None
    drift_report_path: str = ""


def _root() -> Path:
    root = repo_root()
    if root is None:
        raise DemoError("run the demo from a Kubeloop checkout (make demo)")
    return root


def project_version(root: Path) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


class Demo:
    """One run of the loop against the local cluster ``name`` (a real node, one per host)."""

    def __init__(
        self,
        name: str = "demo",
        namespace: str = "kubeloop",
        *,
        say: Callable[[str], None] = print,
        canary_pause: str = "20s",
        progress: Progress | None = None,
    ) -> None:
        self.name, self.namespace, self.say = name, namespace, say
        #: shows each wait (what for, for how long) while it lasts
        self.progress = progress or Progress()
        self.root = _root()
        self.version = project_version(self.root)
        self.canary_pause = canary_pause
        self.workdir = cache_dir() / "demo" / name
        self.summary = Summary()
        self.token = secrets.token_urlsafe(24)
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._stop_targets = threading.Event()
        try:
            self.bins = Binaries.resolve(("kubectl", "helm"))
        except MissingBinaryError as err:
            raise DemoError(str(err)) from err
        self.kubeconfig = DevCluster(name).kubeconfig
        # Prometheus listens on the node's address, so the operator's pod reaches it too
        self.node_ip = NodeConfig.from_env(name).ip
        self.am_port, self.prom_port = free_ports(2)
        self.prom_url = f"http://{self.node_ip}:{self.prom_port}"

    # ------------------------------------------------------------------ tools

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = [str(self.bins["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=300, check=False
        )
        if check and done.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get(self, kind: str, name: str | None = None, *selector: str) -> Any:
        args = ["get", kind, "-n", self.namespace, "-o", "json"]
        out = self.kubectl(*args, *([name] if name else []), *selector, check=name is None)
        return json.loads(out) if out else None

    def status(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, name)
        return dict((obj or {}).get("status") or {})

    def apply(self, *docs: dict[str, Any]) -> None:
        body = yaml.safe_dump_all(docs, sort_keys=False)
        self.kubectl("apply", "--server-side", "-n", self.namespace, "-f", "-", stdin=body)

    def wait(
        self,
        check: Callable[[], T | None],
        what: str,
        timeout: float,
        state: Callable[[], str] | None = None,
    ) -> T:
        """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        delay = 0.5
        with self.progress:
            self.progress.stage(f"waiting for {what}")
            while True:
                value = check()
                if value:
                    return value
                if time.monotonic() > deadline:
                    detail = state() if state else self.describe()
                    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
                time.sleep(delay)
                delay = min(delay * 1.5, 3.0)

    def describe(self) -> str:
        """Objects, pods and the recent events of the namespace, for a failure message."""
        parts = [
            self.kubectl("get", "kubeloop,jobs,pods,svc", "-n", self.namespace, check=False),
            self.kubectl(
                "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
            )[-3000:],
        ]
        for pod in (self.get("pods") or {}).get("items", []):
            if pod["status"].get("phase") not in ("Running", "Succeeded"):
                name = pod["metadata"]["name"]
                logs = self.kubectl("logs", "-n", self.namespace, name, "--tail=20", check=False)
                parts.append(f"--- logs of {name}\n{logs}")
        return "\n".join(parts)

    @contextlib.contextmanager
    def stage(self, title: str, look: str = "") -> Iterator[None]:
        self.say(f"\n==> {title}")
        t0 = time.monotonic()
        yield
        took = time.monotonic() - t0
        self.summary.stages.append((title, took))
        self.say(f"    done in {took:.1f}s" + (f"   (look: {look})" if look else ""))

    @property
    def k(self) -> str:
        """The kubectl command line a reader can paste (after the cluster stage's exports)."""
        return f"kubectl -n {self.namespace}"

    # ------------------------------------------------------------------ stages

    def run(self) -> Summary:
        try:
            self.cluster()
            self.images()
            self.install()
            self.first_model()
            self.predict()
            self.canary()
            self.drift_to_retrain()
            self.guard()
            self.loop_status()
            self.write_drift_report()
        finally:
            self.stop_monitoring()
        return self.summary

    def loop_status(self) -> None:
        """What `kubeloop status` shows of the demo model now, drift read from the demo's
        Prometheus while it still runs."""
        api, _ = user_config(str(self.kubeconfig))
        loops = snapshot(api, self.namespace, MODEL, self.prom_url, limit=10)
        console = Console(width=140, record=True, file=io.StringIO())
        console.print(view(loops, MODEL, self.namespace))
        self.summary.loop, self.summary.loop_text = loops[0], console.export_text()

    def write_drift_report(self) -> None:
        """The demo model's drift report, fetched as `kubeloop drift-report --deployment`
        does (the API server's service proxy, the token from the deployment's Secret)."""
        path = self.workdir / "drift-report.html"
        with self.stage(
            "Drift report: the serving window against the reference profile, one HTML page",
            f".venv/bin/kubeloop drift-report --deployment {MODEL} -n {self.namespace} "
            "--out drift-report.html",
        ):
            api, _ = user_config(str(self.kubeconfig))
            try:
                report = fetch_deployment(api, self.namespace, MODEL, timeout=30)
            except click.ClickException as err:
                raise DemoError(f"drift report: {err.message}\n{self.describe()}") from err
            path.write_text(render_html(report))
            self.summary.drift_report, self.summary.drift_report_path = report, str(path)
            self.say(f"    {path}")

    def cluster(self) -> None:
        with self.stage(
            f"Cluster {self.name!r}: control plane + a real node (containerd, kubelet, "
            "kube-proxy, CoreDNS)",
            "kubectl get nodes -o wide",
        ):

            def log(message: str) -> None:
                self.say(f"    {message}")

            try:
                with self.progress:
                    DevCluster(self.name, log=log, progress=self.progress).up(nodes=0)
                    self.progress.stage("the real node: containerd, kubelet, kube-proxy, CoreDNS")
                    realnode.up(self.name, log)
            except (ClusterError, MissingBinaryError) as err:
                raise DemoError(str(err)) from err
            self.say("    to look yourself, in another shell:")
            self.say(f"      export KUBECONFIG={self.kubeconfig}")
            self.say(f"      export PATH={self.bins['kubectl'].parent}:$PATH")

    def images(self) -> None:
        refs = [f"kubeloop-{c}:{self.version}" for c in COMPONENTS]
        with self.stage("Images: build (make images) and load into the node's containerd"):
            missing = [r for r in refs if not _image_present(r)]
            if missing:
                self.say(f"    building {', '.join(missing)} (hack/images.sh)")
                self._check([str(self.root / "hack" / "images.sh")], "hack/images.sh", 1800)
            self.load(refs)
            self.say(f"    loaded {', '.join(refs)}")

    def load(self, refs: list[str]) -> None:
        """``docker save`` piped into the real node's containerd."""
        with subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE) as save:
            try:
                realnode.load(self.name, [], save.stdout, lambda m: self.say(f"    {m}"))
            except ClusterError as err:
                raise DemoError(f"loading images failed: {err}") from err
        if save.returncode:
            raise DemoError(f"docker save {' '.join(refs)} failed (exit {save.returncode})")

    def _check(self, argv: list[str], what: str, timeout: float) -> None:
        done = subprocess.run(argv, timeout=timeout, check=False)
        if done.returncode != 0:
            raise DemoError(f"{what} failed (exit {done.returncode})")

    def install(self) -> None:
        ns = self.namespace
        with self.stage(
            f"Helm: install charts/kubeloop into namespace {ns!r} (restricted Pod Security)",
            f"helm -n {ns} status {RELEASE}",
        ):
            namespace = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
            self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(namespace))
            self.reset()
            data = self.storage()
            self.say(f"    artifacts volume: hostPath {data} (PV + PVC kubeloop-artifacts)")
            sets = {
                "artifacts.volumeClaim.name": "kubeloop-artifacts",
                "alertReceiver.token": self.token,
                "canaryAnalysis.prometheusUrl": self.prom_url,
                "image.pullPolicy": "Never",
                "workloads.imagePullPolicy": "Never",
            }
            argv = [
                str(self.bins["helm"]),
                "--kubeconfig",
                str(self.kubeconfig),
                "upgrade",
                "--install",
                RELEASE,
                str(self.root / "charts" / "kubeloop"),
                "-n",
                ns,
                "--wait",
                "--timeout=3m",
            ]
            for key, value in sets.items():
                argv += ["--set", f"{key}={value}"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise DemoError(f"helm install failed: {done.stderr}\n{self.describe()}")

    def reset(self) -> None:
        """A re-run starts the loop afresh: the previous run's objects go first (the running
        operator releases their finalizers), then their artifacts."""
        kinds = "modeldeployments,trainingjobs,modelversions,datasets"
        if not self.kubectl("get", kinds, "-n", self.namespace, "-o", "name", check=False):
            return
        self.say("    removing the previous run's Kubeloop objects")
        self.kubectl("delete", kinds, "--all", "-n", self.namespace, "--timeout=120s")
        # empty the volume but keep its directory: running pods (the operator) bind-mount it
        for entry in (self.workdir / "volume").glob("*"):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def storage(self) -> Path:
        """A hostPath PersistentVolume (the node is this machine) with the bundled data."""
        data = self.workdir / "volume"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root / "examples" / "data" / "breast-cancer.csv", data)
        for path in (data, *data.rglob("*")):
            os.chown(path, 10001, 10001)
        pv = f"kubeloop-{self.name}-{self.namespace}"
        claim = "kubeloop-artifacts"
        self.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": pv},
                        "spec": {
                            "capacity": {"storage": "10Gi"},
                            "accessModes": ["ReadWriteMany"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "storageClassName": "",
                            "hostPath": {"path": str(data), "type": "Directory"},
                            "claimRef": {"namespace": self.namespace, "name": claim},
                        },
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": claim, "namespace": self.namespace},
                        "spec": {
                            "accessModes": ["ReadWriteMany"],
                            "storageClassName": "",
                            "volumeName": pv,
                            "resources": {"requests": {"storage": "10Gi"}},
                        },
                    },
                ]
            ),
        )
        return data

    def example(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((self.root / "examples" / name).read_text())
        return doc

    def first_model(self) -> None:
        dataset = self.example("dataset.yaml")
        job = self.example("trainingjob.yaml")
        with self.stage(
            "Dataset: the snapshot Job validates and versions examples/data/breast-cancer.csv",
            f"{self.k} describe dataset {MODEL}",
        ):
            self.apply(dataset)
            version = self.wait(
                lambda: self.status("Dataset", MODEL).get("version"),
                "the Dataset to be Ready",
                timeout=300,
            )
            self.say(f"    version {version}")
        with self.stage(
            "TrainingJob: the trainer Job fits, evaluates, exports ONNX → ModelVersion 1",
            f"{self.k} get trainingjobs,modelversions",
        ):
            self.apply(job)
            self.trained(job["metadata"]["name"])
        deployment = self.example("modeldeployment.yaml")
        spec = deployment["spec"]
        spec["replicas"] = 1
        spec["canary"]["steps"] = [
            {"weight": 20, "pause": self.canary_pause},
            {"weight": 50, "pause": self.canary_pause},
        ]
        spec["monitoring"]["drift"]["window"] = 200
        with self.stage(
            "ModelDeployment: serving pods (ONNX Runtime) for version 1",
            f"{self.k} get modeldeployment {MODEL} -o wide",
        ):
            self.apply(deployment)
            self.wait(
                lambda: self.served() == (1, None),
                "ModelDeployment to serve version 1",
                timeout=300,
            )
            # kube-proxy programs the Service a moment after its pods are ready
            self.wait(self.service_answers, f"Service {MODEL} to answer", timeout=60)

    def service_answers(self) -> bool:
        """Whether the Service's address answers readiness from the host (kube-proxy has
        programmed it: before that the node's guard refuses the address)."""
        with contextlib.suppress(httpx.HTTPError):
            url = f"{self.service_url()}/v2/health/ready"
            return httpx.get(url, timeout=2, trust_env=False).status_code == 200
        return False

    def trained(self, name: str) -> int:
        """Wait for TrainingJob ``name`` and its ModelVersion; record and return the version."""

        def finished() -> dict[str, Any] | None:
            status = self.status("TrainingJob", name)
            if status.get("phase") in ("Failed", "Rejected"):
                raise DemoError(f"TrainingJob {name}: {status}\n{self.describe()}")
            return status if status.get("phase") == "Succeeded" else None

        status = self.wait(finished, f"TrainingJob {name} to succeed", timeout=600)
        number = int(status["version"])
        mv = status["modelVersion"]
        self.wait(
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in self.status("ModelVersion", mv).get("conditions", [])
            ),
            f"ModelVersion {mv} to be Ready",
            timeout=120,
        )
        metrics = status.get("metrics") or {}
        self.summary.versions[number] = {"trainingJob": name, "modelVersion": mv, **metrics}
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("f1", "roc_auc") if k in metrics)
        self.say(f"    ModelVersion {mv} (version {number}): {shown}")
        return number

    def served(self) -> tuple[int | None, int | None]:
        """(stable version, canary version) once the deployment's pods are all ready."""
        status = self.status("ModelDeployment", MODEL)
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        if not ready:
            return (None, None)
        return (status.get("stableVersion"), status.get("canaryVersion"))

    # ------------------------------------------------------------------ traffic

    def service_url(self) -> str:
        svc = self.get("service", MODEL)
        return f"http://{svc['spec']['clusterIP']}:8080"

    def rows(self) -> pd.DataFrame:
        frame = pd.read_csv(self.root / "examples" / "data" / "breast-cancer.csv")
        return frame.drop(columns=["target"])

    def infer(self, http: httpx.Client, rows: pd.DataFrame) -> dict[str, Any]:
        """One Open Inference Protocol v2 request, one tensor per column."""
        body = {
            "inputs": [
                {"name": col, "datatype": "FP64", "shape": [len(rows)], "data": rows[col].tolist()}
                for col in rows.columns
            ]
        }
        response = http.post(f"/v2/models/{MODEL}/infer", json=body)
        if response.status_code != 200:
            logs = self.kubectl(
                "logs",
                "-n",
                self.namespace,
                "-l",
                f"kubeloop.io/model-deployment={MODEL}",
                "--prefix",
                "--tail=20",
                check=False,
            )
            raise DemoError(
                f"infer: HTTP {response.status_code} {dict(response.headers)}: {response.text}\n"
                f"{self.describe()}\n--- serving pods\n{logs}"
            )
        result: dict[str, Any] = response.json()
        return result

    def predict(self) -> None:
        url = self.service_url()
        with self.stage(
            f"Predictions: through Service {MODEL} ({url}, from the host via kube-proxy)",
            f"curl -s {url}/v1/models/{MODEL}:predict -d @examples/requests/breast-cancer.json",
        ):
            request = json.loads((self.root / "examples/requests/breast-cancer.json").read_text())
            with httpx.Client(trust_env=False, base_url=url, timeout=30) as http:
                response = http.post(f"/v1/models/{MODEL}:predict", json=request)
            if response.status_code != 200:
                raise DemoError(f"predict: HTTP {response.status_code}: {response.text}")
            self.summary.predictions = response.json()["predictions"]
            self.say(f"    KServe V1 predict → {self.summary.predictions}")

    def canary(self) -> None:
        job = self.example("trainingjob.yaml")
        job["metadata"]["name"] = f"{MODEL}-rf-deeper"
        job["spec"]["estimator"]["params"] = {"n_estimators": 200, "max_depth": 12}
        with self.stage(
            "Second version: a TrainingJob with more, deeper trees → ModelVersion 2",
            f"{self.k} get trainingjobs,modelversions",
        ):
            self.apply(job)
            number = self.trained(job["metadata"]["name"])
        with self.stage(
            f"Canary v{number}: 20% then 50% ({self.canary_pause} each), then promoted;"
            " responses counted by model_version",
            f"{self.k} get modeldeployment {MODEL} -w",
        ):
            self.watch_rollout(number)
            self.summary.paused += 2 * duration_seconds(self.canary_pause)

    def watch_rollout(self, number: int, timeout: float = 600) -> None:
        """Send traffic while the rollout runs; count the served versions per canary weight."""
        rows = self.rows().iloc[:5]
        split = self.summary.canary_split.setdefault(number, {})
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, base_url=self.service_url(), timeout=30) as http:
            while True:
                status = self.status("ModelDeployment", MODEL)
                if status.get("stableVersion") == number and not status.get("canaryVersion"):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"rollout of version {number} stuck\n{self.describe()}")
                weight = int(status.get("canaryWeight") or 0)
                if status.get("canaryVersion") == number and weight:
                    if weight not in split:
                        self.say(f"    canary at {weight}%")
                    seen = split.setdefault(weight, Counter())
                    for _ in range(20):
                        seen[self.infer(http, rows)["model_version"]] += 1
                else:
                    time.sleep(1)
        self.wait(
            lambda: self.served() == (number, None),
            f"the stable pods to be rolled out to version {number}",
            timeout=300,
        )
        for weight, seen in sorted(split.items()):
            total = sum(seen.values())
            share = seen.get(str(number), 0) / total if total else 0.0
            self.say(f"    at {weight:>3}%: {dict(seen)} → {share:.0%} served by v{number}")
        self.summary.final_stable = number

    # ------------------------------------------------------------------ drift

    def drift_to_retrain(self) -> None:
        with self.stage(
            "Monitoring: Prometheus (rules from `kubeloop rules`) and Alertmanager on loopback",
        ):
            prom = self.start_monitoring()
            self.say(f"    Prometheus {prom}")
        with self.stage(
            "Drift: traffic with four features scaled by 1.8 → KubeloopDataDrift fires",
            f"curl -s '{prom}/api/v1/alerts'",
        ):
            self.drift(prom)
        with self.stage(
            "Retrain: Alertmanager → the operator's receiver → a TrainingJob that runs",
            f"{self.k} describe modeldeployment {MODEL}",
        ):
            number = self.retrained()
        with self.stage(
            f"Canary v{number}: the retrained version at 20% then 50%, then promoted",
            f"{self.k} get modeldeployment {MODEL}",
        ):
            self.watch_rollout(number)
            self.summary.paused += 2 * duration_seconds(self.canary_pause)

    def drift(self, prom: str) -> None:
        """Send drifted rows until the drift alert fires; record its score."""
        drifted = self.rows().iloc[:200].copy()
        for col in FEATURES_SHIFTED:
            drifted[col] = drifted[col] * 1.8
        sent = 0
        with httpx.Client(trust_env=False, base_url=self.service_url(), timeout=30) as http:

            def drifting() -> list[dict[str, Any]]:
                # keep the window full of drifted rows until the alert fires
                nonlocal sent
                start = sent % len(drifted)
                self.infer(http, drifted.iloc[start : start + 50])
                sent += 50
                return firing_alerts(prom, "KubeloopDataDrift")

            (alert, *_) = self.wait(drifting, "the drift alert to fire", timeout=240)
        self.say(f"    sent {sent} drifted rows")
        self.summary.drift_score = float(alert["value"])
        self.say(f"    firing: drift score {self.summary.drift_score:.3f} > 0.2")

    def retrained(self) -> int:
        """Wait for the TrainingJob the retrain policy creates and for its version."""
        selector = f"kubeloop.io/model-deployment={MODEL}"
        jobs = self.wait(
            lambda: self.get("trainingjobs", None, "-l", selector)["items"],
            "a TrainingJob created by the retrain policy",
            timeout=120,
        )
        job = jobs[0]
        self.summary.retrain_job = job["metadata"]["name"]
        self.summary.retrain_trigger = job["metadata"]["labels"].get("kubeloop.io/retrain-trigger")
        self.say(f"    {self.summary.retrain_job} ({self.summary.retrain_trigger})")
        return self.trained(self.summary.retrain_job)

    # ------------------------------------------------------------------ guard

    def guard(self) -> None:
        with self.stage(
            "Guard: the ModelDeployment's canary gated on error rate and prediction shift",
            f"{self.k} get modeldeployment {MODEL} -o jsonpath='{{.spec.canary.analysis}}'",
        ):
            patch = {"spec": {"canary": {"analysis": GUARD}}}
            self.kubectl(
                "patch", "modeldeployment", MODEL, "-n", self.namespace,
                "--type", "merge", "-p", json.dumps(patch),
            )  # fmt: skip
            self.say(
                f"    every {GUARD['interval']}, rollback after {GUARD['failureLimit']} failed"
            )
        with self.stage(
            "Shuffled labels: a TrainingJob with no gate and compareTo: None → a useless version",
            f"{self.k} get trainingjob {SHUFFLED} -o yaml",
        ):
            number = self.shuffled_model()
        with self.stage(
            f"Canary v{number} under analysis: rolled back, the good version keeps serving",
            f"{self.k} describe modeldeployment {MODEL}",
        ):
            self.watch_rollback(number)

    def shuffled_model(self) -> int:
        """A Dataset whose labels are shuffled, and a TrainingJob that trusts it blindly."""
        frame = pd.read_csv(self.root / "examples" / "data" / "breast-cancer.csv")
        frame["target"] = frame["target"].sample(frac=1.0, random_state=7).to_numpy()
        csv = self.workdir / "volume" / f"{SHUFFLED}.csv"
        frame.to_csv(csv, index=False)
        os.chown(csv, 10001, 10001)
        dataset = self.example("dataset.yaml")
        dataset["metadata"]["name"] = SHUFFLED
        dataset["spec"]["source"]["path"] = f"/data/{SHUFFLED}.csv"
        self.apply(dataset)
        job = self.example("trainingjob.yaml")
        job["metadata"]["name"] = SHUFFLED
        job["spec"]["datasetRef"]["name"] = SHUFFLED
        job["spec"]["estimator"]["params"] = {"n_estimators": 50, "max_depth": 2}
        # no absolute gate and no champion: only the canary analysis stands in its way
        job["spec"]["gate"] = {"compareTo": {"policy": "None"}}
        self.apply(job)
        return self.trained(SHUFFLED)

    def watch_rollback(self, number: int, timeout: float = 300) -> None:
        """Send traffic (all the rows, in turn) until the canary of ``number`` is rolled
        back; then count who answers."""
        rows = self.rows()
        sent = 0
        with httpx.Client(trust_env=False, base_url=self.service_url(), timeout=30) as http:

            def rolled_back() -> dict[str, Any] | None:
                nonlocal sent
                for _ in range(10):
                    start = sent % len(rows)
                    self.infer(http, rows.iloc[start : start + 25])
                    sent += 25
                record = self.status("ModelDeployment", MODEL).get("rolledBack") or {}
                return record if record.get("version") == number else None

            record = self.wait(rolled_back, f"version {number} to be rolled back", timeout)
            self.wait(lambda: self.served()[1] is None, "the canary to be gone", timeout=120)
            # The stable pods learn the weight 0 from their mounted routing ConfigMap at the
            # kubelet's next sync; until then they forward, so wait for the canary pods to
            # be gone: a forward that cannot connect is answered by stable itself.
            canary = f"kubeloop.io/model-deployment={MODEL},kubeloop.io/role=canary"
            self.wait(
                lambda: not self.get("pods", None, "-l", canary)["items"],
                "the canary pods to be gone",
                timeout=120,
            )
            for _ in range(20):
                self.summary.after_rollback[self.infer(http, rows.iloc[:5])["model_version"]] += 1
        check = failed_check(record["message"])
        self.summary.rolled_back = (number, check)
        self.say(f"    rolled back version {number}: {check}")
        self.say(f"    then 20 requests answered by {dict(self.summary.after_rollback)}")

    def start_monitoring(self) -> str:
        """Alertmanager → the receiver's Service; Prometheus scraping the serving pods."""
        mon = self.workdir / "monitoring"
        shutil.rmtree(mon, ignore_errors=True)
        mon.mkdir(parents=True)
        webhook = self.get("service", f"{RELEASE}-operator-webhook")["spec"]["clusterIP"]
        token = mon / "token"
        token.write_text(self.token)
        am_port = self.am_port
        am_config = alertmanager_config(
            f"http://{webhook}:8095/v1/alerts", token, group_interval="5s", repeat_interval="1h"
        )
        (mon / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        # the shipped rules, with a short `for:` so the demo does not wait minutes
        (mon / "rules.yml").write_text(render("rules", RuleOptions(drift_for="10s")))
        job = serving_job(
            file_sd_configs=[{"files": [str(mon / "targets.json")], "refresh_interval": "2s"}]
        )
        prom_config = prometheus_config(mon / "rules.yml", am_port, [job], interval="2s")
        (mon / "prometheus.yml").write_text(yaml.safe_dump(prom_config, sort_keys=False))
        self.write_targets(mon / "targets.json")
        self._spawn(
            mon,
            "alertmanager",
            [
                _tool("prometheus-alertmanager", "alertmanager"),
                f"--config.file={mon / 'alertmanager.yml'}",
                f"--storage.path={mon / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            f"http://127.0.0.1:{am_port}/-/ready",
        )
        self._spawn(
            mon,
            "prometheus",
            [
                _tool("prometheus"),
                f"--config.file={mon / 'prometheus.yml'}",
                f"--storage.tsdb.path={mon / 'prometheus-data'}",
                f"--web.listen-address={self.node_ip}:{self.prom_port}",
                "--log.level=warn",
            ],
            f"{self.prom_url}/-/ready",
        )
        threading.Thread(
            target=self._refresh_targets, args=(mon / "targets.json",), daemon=True
        ).start()
        return self.prom_url

    def write_targets(self, path: Path) -> None:
        """The serving pods as Kubernetes pod discovery would give them to the relabelling."""
        groups = []
        for pod in self.get("pods", None, "-l", "kubeloop.io/model-deployment")["items"]:
            ip = pod["status"].get("podIP")
            if not ip or pod["status"].get("phase") != "Running":
                continue
            groups.append(discovered_pod(f"{ip}:8080", pod))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(path)

    def _refresh_targets(self, path: Path) -> None:
        while not self._stop_targets.wait(2):
            with contextlib.suppress(DemoError, subprocess.SubprocessError, ValueError):
                self.write_targets(path)

    def _spawn(self, workdir: Path, name: str, argv: list[str], ready_url: str) -> None:
        log = (workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._daemons.append(proc)
        (workdir / f"{name}.pid").write_text(str(proc.pid))

        def ready() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited: {(workdir / f'{name}.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(ready_url, timeout=2, trust_env=False).status_code == 200
            return False

        self.wait(ready, f"{name} to be ready", timeout=60, state=lambda: name)

    def stop_monitoring(self) -> None:
        self._stop_targets.set()
        for proc in self._daemons:
            proc.terminate()
        for proc in self._daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._daemons.clear()

    def down(self) -> None:
        """Stop the monitoring, the real node and the cluster; remove the demo's files."""
        self.stop_monitoring()
        # daemons of an earlier run that did not stop them (killed, or another process)
        for pidfile in (self.workdir / "monitoring").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if str(self.workdir) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGTERM)
        realnode.down_if_owned(self.name, lambda m: self.say(f"    {m}"))
        DevCluster(self.name).down()
        shutil.rmtree(self.workdir, ignore_errors=True)


def stage_lines(summary: Summary) -> list[str]:
    """The stage table: each stage's time, the total, and the total less the configured
    canary pauses (the time the loop itself took)."""
    lines = ["Stages"]
    for title, took in summary.stages:
        lines.append(f"  {took:7.1f}s  {title.split(':')[0]}")
    total = sum(t for _, t in summary.stages)
    lines.append(f"  {total:7.1f}s  total")
    lines.append(f"  outside pauses: {max(0.0, total - summary.paused):.0f} s")
    return lines


def report(summary: Summary, demo: Demo) -> str:
    """The closing table: versions, rollouts, drift, retraining, stage times."""
    lines = ["", "Versions of model breast-cancer", f"  {'v':<3} {'trained by':<34} f1     roc_auc"]
    for number, info in sorted(summary.versions.items()):
        f1, auc = info.get("f1", float("nan")), info.get("roc_auc", float("nan"))
        lines.append(f"  {number:<3} {info['trainingJob']:<34} {f1:.3f}  {auc:.3f}")
    lines.append("Canary splits observed (responses by model_version)")
    for number, split in sorted(summary.canary_split.items()):
        for weight, seen in sorted(split.items()):
            share = seen.get(str(number), 0) / max(1, sum(seen.values()))
            counts = dict(sorted(seen.items()))
            lines.append(f"  v{number} at {weight:>3}%: {counts} ({share:.0%} from v{number})")
    if summary.drift_score is not None:
        lines.append(f"Drift score when the alert fired: {summary.drift_score:.3f} (threshold 0.2)")
    lines.append(f"Retraining: {summary.retrain_job} (trigger {summary.retrain_trigger})")
    if summary.rolled_back is not None:
        number, check = summary.rolled_back
        lines.append(f"Guard: rolled back version {number}: {check}")
        lines.append(f"  answered afterwards by {dict(sorted(summary.after_rollback.items()))}")
    lines.append(f"Serving now: version {summary.final_stable}")
    if summary.loop_text:
        lines += [f"kubeloop status {MODEL} -n {demo.namespace}", summary.loop_text.rstrip()]
    lines += artifact_lines(summary, demo.root)
    lines += stage_lines(summary)
    lines += [
        "",
        "Look around:",
        f"  export KUBECONFIG={demo.kubeconfig}",
        f"  {demo.bins['kubectl']} -n {demo.namespace} get kubeloop,pods",
        f"  .venv/bin/kubeloop status {MODEL} -n {demo.namespace}",
        "Tear it down: make demo-down",
    ]
    return "\n".join(lines)


def artifact_lines(summary: Summary, root: Path) -> list[str]:
    """Where the files to open in a browser or Grafana are: the drift report the run
    wrote, and the chart's dashboards."""
    lines = []
    if summary.drift_report is not None:
        drifted = sum(f.drifted for f in summary.drift_report.features)
        lines.append(
            f"Drift report ({drifted} of {len(summary.drift_report.features)} features "
            f"drifted): {summary.drift_report_path}"
        )
    lines.append(f"Grafana dashboards (JSON): {root / 'charts' / 'kubeloop' / 'dashboards'}/")
    return lines


@click.command("demo")
@click.option("--name", default="demo", show_default=True, help="Local cluster name.")
@click.option("--down", "down_only", is_flag=True, help="Tear the demo down and exit.")
@progress_option
def main(name: str, down_only: bool, progress_mode: str) -> None:
    """Run the whole loop on a local cluster with a real node, narrated."""
    # the narration is on stdout: a live display only when that is the terminal too
    auto_off = progress_mode == "auto" and not sys.stdout.isatty()
    shown = open_progress("none" if auto_off else progress_mode, transient=True)
    demo = Demo(name, say=lambda m: click.echo(m), progress=shown)
    # a plain `kill` tears down like Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if down_only:
        demo.down()
        click.echo(f"demo {name!r} is down")
        return
    try:
        summary = demo.run()
    except KeyboardInterrupt:
        click.echo("\ninterrupted: tearing the demo down", err=True)
        demo.down()
        raise SystemExit(130) from None
    except DemoError as err:
        raise click.ClickException(f"{err}\n(tear down: make demo-down)") from err
    click.echo(report(summary, demo))


def failed_check(message: str) -> str:
    """The first failed check (``<check> <value> > <bound>``) of a rollback message."""
    found = re.search(r"(\S+ \S+ [<>] \S+)", message)
    return found.group(1) if found else message


def firing_alerts(prom: str, name: str) -> list[dict[str, Any]]:
    """The alerts named ``name`` that Prometheus reports as firing."""
    response = httpx.get(f"{prom}/api/v1/alerts", timeout=10, trust_env=False)
    alerts = response.json()["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == name and a["state"] == "firing"]


def _image_present(ref: str) -> bool:
    if shutil.which("docker") is None:
        return False
    found = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False)
    return found.returncode == 0


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise DemoError(f"{names[0]} not found: make monitoring-tools")


if __name__ == "__main__":
    main()
