"""The Helm chart on the real API server.

- Every object `helm template` renders (default values and each ci/ scenario) is accepted
  by `kubectl apply --dry-run=server`, in namespaces that enforce the restricted Pod
  Security profile, without a Pod Security warning.
- `helm install`, then the operator runs out of cluster **as the chart's ServiceAccount**
  (a kubeconfig with a token from `kubectl create token`), with exactly the arguments and
  environment of the chart's Deployment, through its flows: a Dataset's snapshot Job, a
  TrainingJob's Job finished by the test (playing the kubelet) into a verified
  ModelVersion, a ModelDeployment's Deployment/Service/ConfigMap/HPA, an Alertmanager
  notification with the chart's token turned into a TrainingJob, the admission policy
  refusing to delete the served ModelVersion, deleting a TrainingJob leaving its
  ModelVersion, and deletion through the kubeloop.io/finalizer. Any 403 in the operator's
  log fails the test: the RBAC is enough.
- `kubectl auth can-i --as` the operator's ServiceAccount: it is not more than needed.
- Cluster-wide mode and kopf peering (one active replica, one standby) under their RBAC.
- `helm upgrade` updates the CRDs and keeps the generated token; `helm uninstall` keeps
  the CRDs (crds.keep) and with them the objects.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubelet import finish_pod, job_pod
from kubernetes import client
from kubernetes.dynamic.exceptions import ForbiddenError
from kubetest import Kubectl, stop_group, wait_for
from operator_harness import Cluster, free_port
from retrain_helpers import alert, notification

from helmchart import CHART, SCENARIOS, helm, render_text, value_args
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator.app import peering_priority

pytestmark = pytest.mark.cluster

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
RELEASE = "kubeloop"
SA = "kubeloop-operator"
CI_NAMESPACES = ("kubeloop-ci-team-a", "kubeloop-ci-team-b")
KUBELOOP_KINDS = ("ModelDeployment", "TrainingJob", "ModelVersion", "Dataset", "BatchPrediction")
CRD_NAMES = tuple(
    f"{plural}.kubeloop.io"
    for plural in (
        "datasets",
        "trainingjobs",
        "modelversions",
        "modeldeployments",
        "batchpredictions",
    )
)
#: What a permission problem looks like in the operator's log (kopf and the client).
FORBIDDEN = re.compile(
    r"\b403\b|forbidden|Not enough permissions|Failed to post an event", re.IGNORECASE
)
#: The log line's timestamp ("2026-12-01 15:08:59,403 ..."), whose milliseconds can be 403.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ ")
PSA_RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
}


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def admin(kubectl_bin: str, kubeconfig: str) -> Kubectl:
    return Kubectl(kubectl_bin, kubeconfig)


def restrict(admin: Kubectl, namespace: str) -> None:
    """Make the namespace enforce (and warn about) the restricted Pod Security profile."""
    admin(
        "label",
        "--overwrite",
        "namespace",
        namespace,
        *[f"{k}={v}" for k, v in PSA_RESTRICTED.items()],
    )


@pytest.fixture(scope="session")
def ci_namespaces(admin: Kubectl) -> Iterator[tuple[str, ...]]:
    """The namespaces the ci/ scenarios name, restricted."""
    for ns in CI_NAMESPACES:
        admin("create", "namespace", ns, check=False)
        restrict(admin, ns)
    yield CI_NAMESPACES
    for ns in CI_NAMESPACES:
        admin("delete", "namespace", ns, "--wait=false", check=False)


def _standin_crd(kind: str, plural: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The CRD of monitoring.coreos.com/v1 ``kind``, its spec holding just ``spec``'s fields."""
    version: dict[str, Any] = {"name": "v1", "served": True, "storage": True}
    version["schema"] = {"openAPIV3Schema": _obj(spec=_obj(**spec))}
    group = "monitoring.coreos.com"
    names = {"kind": kind, "plural": plural, "singular": kind.lower()}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"kubeloop.io/test-stand-in": "true"}},
        "spec": {"group": group, "scope": "Namespaced", "names": names, "versions": [version]},
    }


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def _arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STR = {"type": "string"}
STRMAP = {"type": "object", "additionalProperties": STR}
SELECTOR = _obj(
    matchLabels=STRMAP,
    matchExpressions=_arr(_obj(key=STR, operator=STR, values=_arr(STR))),
)
NS_SELECTOR = _obj(any={"type": "boolean"}, matchNames=_arr(STR))
RELABEL = _obj(
    sourceLabels=_arr(STR),
    targetLabel=STR,
    regex=STR,
    action=STR,
    replacement=STR,
    separator=STR,
)
ENDPOINT = _obj(port=STR, path=STR, interval=STR, relabelings=_arr(RELABEL))

#: Stand-ins for prometheus-operator's CRDs (not vendored here): structural schemas of
#: just the fields the chart writes, named as in the monitoring.coreos.com/v1 API, with
#: nothing else allowed. kubectl's strict field validation then rejects any field the
#: chart misspells or invents; the rule content itself is checked by promtool
#: (tests/component/test_chart_static.py).
STANDIN_CRDS = [
    _standin_crd(
        "PrometheusRule",
        "prometheusrules",
        {
            "groups": _arr(
                _obj(
                    name=STR,
                    interval=STR,
                    rules=_arr(
                        _obj(
                            alert=STR,
                            record=STR,
                            expr={"x-kubernetes-int-or-string": True},
                            **{"for": STR},
                            labels=STRMAP,
                            annotations=STRMAP,
                        )
                    ),
                )
            )
        },
    ),
    _standin_crd(
        "ServiceMonitor",
        "servicemonitors",
        {"selector": SELECTOR, "namespaceSelector": NS_SELECTOR, "endpoints": _arr(ENDPOINT)},
    ),
    _standin_crd(
        "PodMonitor",
        "podmonitors",
        {
            "selector": SELECTOR,
            "namespaceSelector": NS_SELECTOR,
            "podMetricsEndpoints": _arr(ENDPOINT),
        },
    ),
]


@pytest.fixture(scope="session")
def monitoring_crds(admin: Kubectl) -> Iterator[None]:
    """prometheus-operator's kinds: the real CRDs when the cluster has them, else stand-ins."""
    created = []
    for crd in STANDIN_CRDS:
        name = crd["metadata"]["name"]
        if admin("get", "crd", name, check=False).returncode == 0:
            continue  # a real prometheus-operator CRD: never touched
        admin("create", "-f", "-", input=json.dumps(crd))
        created.append(name)
    if created:
        admin(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *[f"crd/{n}" for n in created],
            timeout=90,
        )
    yield
    for name in created:
        admin("delete", "crd", name, "--wait=false", check=False)


def install(
    admin: Kubectl,
    namespace: str,
    *values: str,
    sets: dict[str, Any] | None = None,
    release: str = RELEASE,
    action: str = "install",
) -> str:
    """`helm install|upgrade` into the test cluster; returns helm's output (with NOTES)."""
    out = helm(
        action,
        release,
        str(CHART),
        "--namespace",
        namespace,
        *value_args(values, sets),
        kubeconfig=admin.kubeconfig,
        timeout=180,
    )
    return out.stdout


@contextlib.contextmanager
def installed(
    admin: Kubectl, namespace: str, *values: str, sets: dict[str, Any] | None = None
) -> Iterator[str]:
    notes = install(admin, namespace, *values, sets=sets)
    try:
        yield notes
    finally:
        helm(
            "uninstall", RELEASE, "--namespace", namespace, kubeconfig=admin.kubeconfig, check=False
        )


def manifest(admin: Kubectl, namespace: str) -> list[dict[str, Any]]:
    out = helm("get", "manifest", RELEASE, "--namespace", namespace, kubeconfig=admin.kubeconfig)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def token_kubeconfig(admin: Kubectl, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a bound token only."""
    token = admin("create", "token", account, "-n", namespace, "--duration=3600s").stdout.strip()
    config = yaml.safe_load(Path(admin.kubeconfig).read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": cluster["cluster"]}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": account,
                        "context": {"cluster": "test", "user": account, "namespace": namespace},
                    }
                ],
                "current-context": account,
            }
        )
    )
    return path


class ChartOperator:
    """`kubeloop` run here with the args and env of the chart's Deployment, as its ServiceAccount.

    Only what cannot work out of cluster changes: the liveness endpoint, the receiver and
    the metrics move to free loopback ports (metrics off), the token file is a local copy
    of the chart's Secret, resync is 1 s to keep the test short.
    """

    def __init__(
        self,
        docs: list[dict[str, Any]],
        kubeconfig: Path,
        token: str | None,
        workdir: Path,
        name: str = "operator",
    ) -> None:
        dep = next(d for d in docs if d["kind"] == "Deployment")
        container = dep["spec"]["template"]["spec"]["containers"][0]
        self.port = free_port()
        self.args = [
            f"--liveness=http://127.0.0.1:{self.port}/healthz" if a.startswith("--liveness=") else a
            for a in container["args"]
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_")}
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        env.update(
            KUBECONFIG=str(kubeconfig),
            POD_ID=f"{name}-{secrets.token_hex(3)}",  # the pod name, in the cluster
            KUBELOOP_METRICS_PORT="0",
            KUBELOOP_RESYNC_SECONDS="1",
        )
        self.webhook_port: int | None = None
        if token is not None:
            token_file = workdir / f"{name}-token"
            token_file.write_text(token)
            self.webhook_port = free_port()
            env.update(
                KUBELOOP_WEBHOOK_TOKEN_FILE=str(token_file),
                KUBELOOP_WEBHOOK_HOST="127.0.0.1",
                KUBELOOP_WEBHOOK_PORT=str(self.webhook_port),
            )
        self.env = env
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChartOperator:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [KUBELOOP, *self.args],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._live, f"operator liveness on port {self.port}", timeout=60, state=self.tail)
        if self.webhook_port is not None:
            wait_for(self._receiving, "the alert receiver", timeout=30, state=self.tail)
        return self

    def _live(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"operator exited {self.proc.returncode}:\n" + "\n".join(self.tail())
            )
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def _receiving(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.webhook_port}/healthz"
            return httpx.get(url, timeout=2).is_success
        except httpx.HTTPError:
            return False

    def post(self, payload: Any, token: str) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.webhook_port}/v1/alerts",
            json=payload,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> list[str]:
        return self.text().splitlines()[-40:]

    def stop(self) -> None:
        stop_group(self.proc, timeout=30)

    def assert_never_forbidden(self) -> None:
        bad = [
            line for line in self.text().splitlines() if FORBIDDEN.search(TIMESTAMP.sub("", line))
        ]
        assert not bad, "permission errors in the operator's log:\n" + "\n".join(bad[:20])


def delete_all(cluster: Cluster) -> None:
    """Delete every Kubeloop object and wait until the operator has released its finalizers:
    the ModelDeployments first, since the versions they serve cannot be deleted before."""
    cluster.delete_all(KUBELOOP_KINDS[:1])
    cluster.delete_all(KUBELOOP_KINDS[1:])


def secret_token(core: client.CoreV1Api, namespace: str, name: str = "kubeloop-webhook") -> str:
    secret = core.read_namespaced_secret(name, namespace)
    return base64.b64decode(secret.data["token"]).decode()


def dataset(name: str, source: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"source": {"uri": source.as_uri()}, "format": "csv", "target": "target"},
    }


def finish_snapshot(cluster: Cluster, name: str, source: Path) -> str:
    """Play the kubelet for the Dataset's snapshot pod: succeeded, with a made-up digest."""
    job = cluster.wait_job(f"kubeloop.io/dataset={name}")
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    summary = {
        "kind": "snapshot",
        "status": "succeeded",
        "digest": digest,
        "rows": 3,
        "snapshot_uri": source.as_uri(),
        "columns": [{"name": "x", "type": "number"}, {"name": "target", "type": "integer"}],
    }
    pod = job_pod(cluster.core, cluster.namespace, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=0, message=json.dumps(summary))
    wait_for(
        lambda: cluster.status("Dataset", name).get("version") == digest,
        f"Dataset {name} to be Ready",
        state=lambda: cluster.get("Dataset", name),
    )
    return digest


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "cancer.csv"
    path.write_text("x,target\n1,0\n2,1\n3,0\n")
    return path


# ---------------------------------------------------------------- every rendered object


@pytest.mark.parametrize("scenario", ["(default)", *SCENARIOS])
def test_every_rendered_object_is_accepted_by_the_api_server(
    scenario, admin, namespace, ci_namespaces, monitoring_crds, kopf_crds
):
    restrict(admin, namespace)
    values = () if scenario == "(default)" else (scenario,)
    text = render_text(*values, namespace=namespace, include_crds=True)
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(text) if d})
    out = admin(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        "-",
        input=text,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, f"{scenario}: {out.stderr}"
    assert "PodSecurity" not in out.stderr, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    accepted = out.stdout.count("(server dry run)")
    assert accepted == text.count("\nkind: ") + text.startswith("kind: "), (kinds, out.stdout)


# ---------------------------------------------------------------- the operator, chart RBAC only


def training_spec(name: str) -> dict[str, Any]:
    """A TrainingJob spec (and retrain template) of model ``name`` on Dataset ``name``."""
    return {
        "datasetRef": {"name": name},
        "modelName": name,
        "task": "classification",
        "target": "target",
        "estimator": {"className": "LogisticRegression"},
    }


def check_install(core: client.CoreV1Api, namespace: str, notes: str) -> None:
    """helm's NOTES and the in-cluster replica of a fresh install."""
    # helm's NOTES tell the user what to apply next
    assert f"kubectl -n {namespace} apply -f examples/dataset.yaml" in notes
    assert f"kubeloop-operator-webhook.{namespace}.svc:8095/v1/alerts" in notes
    # the in-cluster replica passes restricted Pod Security admission (kwok "runs" it)
    wait_for(
        lambda: (
            core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/component=operator"
            ).items
        ),
        "the operator pod (restricted Pod Security admitted it)",
        timeout=60,
    )


def snapshot_flow(cluster: Cluster, source: Path) -> str:
    """Dataset -> snapshot Job (the workload account, the trainer image) -> Ready; its digest."""
    cluster.apply(dataset("cancer", source))
    job = cluster.wait_job("kubeloop.io/dataset=cancer")
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "kubeloop-workload"
    assert pod_spec["containers"][0]["image"] == "kubeloop-trainer:0.1.0"
    digest = finish_snapshot(cluster, "cancer", source)
    assert "SnapshotStarted" in wait_for(lambda: cluster.events("cancer"), "Events")
    return digest


def training_flow(cluster: Cluster, store: Path, digest: str) -> None:
    """TrainingJob -> trainer Job finished by the test -> a verified ModelVersion."""
    cluster.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "cancer-1"},
            "spec": training_spec("cancer"),
        }
    )
    train = cluster.wait_job("kubeloop.io/training-job=cancer-1")
    artifact = store / "cancer-1" / ArtifactLayout.MODEL
    artifact.parent.mkdir()
    artifact.write_bytes(b"an onnx model")
    # the trainer writes model.json beside the graph (a version without it is inspected)
    (artifact.parent / ArtifactLayout.METADATA).write_text('{"task": "classification"}')
    summary = {
        "kind": "train",
        "status": "succeeded",
        "artifact_uri": artifact.as_uri(),
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "metrics": {"accuracy": 0.9},
    }
    pod = job_pod(cluster.core, cluster.namespace, train["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=0, message=json.dumps(summary))
    wait_for(
        lambda: cluster.status("TrainingJob", "cancer-1").get("phase") == "Succeeded",
        "TrainingJob cancer-1 to succeed",
        state=lambda: cluster.get("TrainingJob", "cancer-1"),
    )
    assert cluster.status("TrainingJob", "cancer-1")["datasetVersion"] == digest
    wait_for(
        lambda: cluster.condition("ModelVersion", "cancer-v1").get("status") == "True",
        "ModelVersion cancer-v1 to be verified",
        state=lambda: cluster.get("ModelVersion", "cancer-v1"),
    )


def prediction_flow(cluster: Cluster, operator: ChartOperator, store: Path) -> None:
    """BatchPrediction on a schedule -> a CronJob (server-side apply); the schedule removed
    -> the CronJob deleted and a one-off Job, finished by the test -> Succeeded."""
    out = (store / "predictions" / cluster.namespace / "scores.csv").as_uri()
    spec = {"modelRef": {"name": "cancer-v1"}, "datasetRef": {"name": "cancer"},
            "output": {"uri": out}, "schedule": "0 3 * * *"}  # fmt: skip
    cluster.apply({"apiVersion": "kubeloop.io/v1alpha1", "kind": "BatchPrediction",
                   "metadata": {"name": "scores"}, "spec": spec})  # fmt: skip
    cronjob = wait_for(
        lambda: cluster.list("CronJob", "batch/v1", "kubeloop.io/batch-prediction=scores"),
        "the BatchPrediction's CronJob",
        state=operator.tail,
    )[0]
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == (
        "kubeloop-workload"
    )
    cluster.patch("BatchPrediction", "scores", {"spec": {"schedule": None}})
    wait_for(
        lambda: not cluster.list("CronJob", "batch/v1"), "the CronJob to go", state=operator.tail
    )
    job = cluster.wait_job("kubeloop.io/batch-prediction=scores")
    result = {"kind": "predict", "status": "succeeded", "rows": 569, "sha256": "ab" * 32,
              "output_uri": out, "duration_seconds": 0.1}  # fmt: skip
    pod = job_pod(cluster.core, cluster.namespace, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=0, message=json.dumps(result))
    wait_for(
        lambda: cluster.status("BatchPrediction", "scores").get("phase") == "Succeeded",
        "BatchPrediction scores to succeed",
        state=lambda: cluster.get("BatchPrediction", "scores"),
    )
    assert cluster.status("BatchPrediction", "scores")["rows"] == 569


def serving_flow(cluster: Cluster, operator: ChartOperator) -> None:
    """ModelDeployment -> Deployment, Service, routing ConfigMap, HPA, NetworkPolicy,
    feedback-token Secret."""
    cluster.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "cancer"},
            "spec": {
                "modelName": "cancer",
                "replicas": 1,
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                "networkPolicy": {"ingressFrom": [{"podSelector": {}}]},
                "retrain": {"enabled": True, "cooldown": "1h", "template": training_spec("cancer")},
            },
        }
    )
    for api_version, kind in (
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "Secret"),
    ):
        wait_for(
            lambda api_version=api_version, kind=kind: (
                cluster.list(kind, api_version, "kubeloop.io/model-deployment=cancer")
                or [
                    o
                    for o in cluster.list(kind, api_version)
                    if o["metadata"]["name"].startswith("cancer")
                ]
            ),
            f"the ModelDeployment's {kind}",
            state=operator.tail,
        )
    serving = cluster.list("Deployment", "apps/v1", "kubeloop.io/model-deployment=cancer")[0]
    assert serving["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "kubeloop-serving:0.1.0"
    )
    served_version_is_protected(cluster, operator)
    # without spec.networkPolicy the operator deletes the NetworkPolicy (its `delete` verb)
    cluster.patch("ModelDeployment", "cancer", {"spec": {"networkPolicy": None}})
    wait_for(
        lambda: not cluster.list("NetworkPolicy", "networking.k8s.io/v1"),
        "the NetworkPolicy to go",
        state=operator.tail,
    )


def served_version_is_protected(cluster: Cluster, operator: ChartOperator) -> None:
    """The served version carries the deployment's label, and the chart's admission policy
    refuses its deletion naming the deployment."""
    wait_for(
        lambda: (
            (cluster.get("ModelVersion", "cancer-v1") or {})["metadata"]
            .get("labels", {})
            .get("served-by.kubeloop.io/cancer")
            == "stable"
        ),
        "the served-by label on cancer-v1",
        state=operator.tail,
    )
    # status is written after the children are applied, a moment after the label
    wait_for(
        lambda: (
            cluster.status("ModelDeployment", "cancer").get("servedModelVersions") == ["cancer-v1"]
        ),
        "status.servedModelVersions to name cancer-v1",
        state=operator.tail,
    )
    versions = cluster.dyn.resources.get(api_version="kubeloop.io/v1alpha1", kind="ModelVersion")
    with pytest.raises(ForbiddenError) as refused:
        versions.delete(name="cancer-v1", namespace=cluster.namespace)
    message = json.loads(refused.value.body)["message"]
    assert "ModelVersion cancer-v1 is served by ModelDeployment cancer (stable)" in message
    assert cluster.get("ModelVersion", "cancer-v1") is not None


def retrain_flow(cluster: Cluster, operator: ChartOperator, token: str) -> None:
    """Alertmanager -> the receiver (the chart's token) -> a TrainingJob."""
    namespace = cluster.namespace
    assert operator.post(notification(alert(namespace, "cancer")), "wrong").status_code == 401
    answer = operator.post(notification(alert(namespace, "cancer")), token)
    assert answer.status_code == 200, answer.text
    assert [r["result"] for r in answer.json()["results"]] == ["created"]
    retrained = wait_for(
        lambda: cluster.list("TrainingJob", selector="kubeloop.io/model-deployment=cancer"),
        "the retrain TrainingJob",
    )
    # on a snapshot newer than the alert (the default for a retrain)
    assert retrained[0]["spec"]["datasetRef"] == {"name": "cancer", "fresh": True}
    wait_for(lambda: "RetrainCreated" in cluster.events("cancer"), "the RetrainCreated Event")


def deletion_flow(cluster: Cluster) -> None:
    """Deletion through the finalizer the operator holds; the registry outlives its jobs."""
    for kind, name in (("Dataset", "cancer"), ("ModelDeployment", "cancer")):
        meta = (cluster.get(kind, name) or {}).get("metadata", {})
        assert "kubeloop.io/finalizer" in meta.get("finalizers", []), meta
    # the TrainingJob goes with its trainer Job (garbage-collected), its ModelVersion stays;
    # the collector learns a CRD's kind at its discovery resync (every 30 s), so a kind
    # installed by this release just now may take that long to be collected
    cluster.delete_all(("TrainingJob",))
    wait_for(
        lambda: not cluster.list("Job", "batch/v1", "kubeloop.io/training-job=cancer-1"),
        "the garbage collector to delete the TrainingJob's trainer Job",
        timeout=120,
        state=lambda: [
            j["metadata"].get("ownerReferences")
            for j in cluster.list("Job", "batch/v1", "kubeloop.io/training-job=cancer-1")
        ],
    )
    assert cluster.get("ModelVersion", "cancer-v1") is not None
    # the deployment's deletion takes its label off: the version may go now
    cluster.delete_all(("ModelDeployment",))
    labels = cluster.get("ModelVersion", "cancer-v1")["metadata"].get("labels", {})
    assert "served-by.kubeloop.io/cancer" not in labels
    delete_all(cluster)


def test_operator_runs_every_flow_with_the_charts_service_account_only(
    admin, namespace, core, api_client, tmp_path, source
):
    restrict(admin, namespace)
    store = tmp_path / "store"
    store.mkdir()
    sets = {"crds": {"enabled": False}, "artifacts": {"root": store.as_uri()}}
    with installed(admin, namespace, sets=sets) as notes:
        check_install(core, namespace, notes)
        docs = manifest(admin, namespace)
        token = secret_token(core, namespace)
        assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
        kubeconfig = token_kubeconfig(admin, namespace, SA, tmp_path / "sa.kubeconfig")
        operator = ChartOperator(docs, kubeconfig, token, tmp_path).start()
        cluster = Cluster(api_client, namespace)
        try:
            digest = snapshot_flow(cluster, source)
            training_flow(cluster, store, digest)
            prediction_flow(cluster, operator, store)
            serving_flow(cluster, operator)
            retrain_flow(cluster, operator, token)
            deletion_flow(cluster)
        finally:
            if cluster.list("Dataset") or cluster.list("ModelDeployment"):
                with contextlib.suppress(AssertionError):
                    delete_all(cluster)
            operator.stop()
        operator.assert_never_forbidden()


def can_i(admin: Kubectl, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    """``resource`` may name a subresource (``pods/exec``): kubectl reads ``TYPE/NAME``, so it
    goes as ``--subresource``."""
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={account}"]
    args += [f"--subresource={sub}"] if sub else []
    args += [f"--namespace={namespace}"] if namespace else ["--all-namespaces"]
    out = admin(*args, check=False)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stderr
    return answer == "yes"


def granted(admin: Kubectl, account: str, namespace: str) -> set[tuple[str, str]]:
    """(resource, verb) pairs `kubectl auth can-i --list` shows for the account."""
    out = admin("auth", "can-i", "--list", f"--as={account}", f"--namespace={namespace}")
    pairs = set()
    for line in out.stdout.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+(\[.*?\])\s+(\[.*?\])\s+\[(.*)\]$", line.strip())
        if match:
            for verb in match.group(4).split():
                pairs.add((match.group(1), verb))
    return pairs


#: What the operator may do in a watched namespace, exactly (namespaced mode).
NAMESPACED_GRANTS = (
    {("datasets.kubeloop.io", v) for v in ("get", "list", "watch", "patch")}
    | {("modeldeployments.kubeloop.io", v) for v in ("get", "list", "watch", "patch")}
    | {("batchpredictions.kubeloop.io", v) for v in ("get", "list", "watch", "patch")}
    | {
        (r, v)
        for r in ("trainingjobs.kubeloop.io", "modelversions.kubeloop.io")
        for v in ("get", "list", "watch", "patch", "create")
    }
    | {
        (f"{k}/status", "patch")
        for k in (
            "datasets.kubeloop.io",
            "trainingjobs.kubeloop.io",
            "modelversions.kubeloop.io",
            "modeldeployments.kubeloop.io",
            "batchpredictions.kubeloop.io",
        )
    }
    # every child kind is listed and watched (a change wakes its parent)
    | {
        (r, v)
        for r in (
            "jobs.batch",
            "cronjobs.batch",
            "deployments.apps",
            "services",
            "configmaps",
            "horizontalpodautoscalers.autoscaling",
            "networkpolicies.networking.k8s.io",
            "serviceaccounts",
            "roles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
        )
        for v in ("list", "watch")
    }
    | {
        ("modelversions.kubeloop.io", "delete"),  # spec.retention
        ("jobs.batch", "get"),
        ("jobs.batch", "create"),
        ("cronjobs.batch", "create"),
        ("cronjobs.batch", "patch"),
        ("cronjobs.batch", "delete"),
        ("pods", "list"),
        ("deployments.apps", "get"),
        ("deployments.apps", "create"),
        ("deployments.apps", "patch"),
        ("deployments.apps", "delete"),
        ("services", "create"),
        ("services", "patch"),
        ("services", "delete"),
        ("configmaps", "create"),
        ("configmaps", "patch"),
        # held so it may grant them, scoped to one ConfigMap, to a deployment's stable pods
        ("configmaps", "get"),
        ("configmaps", "list"),
        ("configmaps", "watch"),
        ("serviceaccounts", "create"),
        ("serviceaccounts", "patch"),
        ("roles.rbac.authorization.k8s.io", "create"),
        ("roles.rbac.authorization.k8s.io", "patch"),
        ("rolebindings.rbac.authorization.k8s.io", "create"),
        ("rolebindings.rbac.authorization.k8s.io", "patch"),
        ("secrets", "create"),
        ("horizontalpodautoscalers.autoscaling", "create"),
        ("horizontalpodautoscalers.autoscaling", "patch"),
        ("horizontalpodautoscalers.autoscaling", "delete"),
        ("networkpolicies.networking.k8s.io", "create"),
        ("networkpolicies.networking.k8s.io", "patch"),
        ("networkpolicies.networking.k8s.io", "delete"),
        ("httproutes.gateway.networking.k8s.io", "create"),
        ("httproutes.gateway.networking.k8s.io", "patch"),
        ("httproutes.gateway.networking.k8s.io", "delete"),
        ("events", "create"),
        # kopf peering (two replicas by default): each renews its record in the KopfPeering
        ("kopfpeerings.kopf.dev", "list"),
        ("kopfpeerings.kopf.dev", "watch"),
        ("kopfpeerings.kopf.dev", "patch"),
        # cluster-scoped reads of kopf
        ("customresourcedefinitions.apiextensions.k8s.io", "list"),
        ("customresourcedefinitions.apiextensions.k8s.io", "watch"),
        ("namespaces", "list"),
        ("namespaces", "watch"),
    }
)


def denied_calls(namespace: str, other: str) -> list[tuple[str, str, str | None]]:
    """(verb, resource, namespace or None: all) the operator's account may never do."""
    return [
        ("get", "secrets", namespace),
        ("list", "secrets", namespace),
        ("watch", "secrets", namespace),
        ("patch", "secrets", namespace),
        ("update", "secrets", namespace),
        ("delete", "secrets", namespace),
        ("create", "secrets", other),
        ("get", "secrets", "kube-system"),
        ("list", "secrets", None),
        ("*", "*", namespace),
        ("*", "*", None),
        ("delete", "namespaces", None),
        ("create", "namespaces", None),
        ("get", "namespaces", None),
        ("create", "pods", namespace),
        ("delete", "pods", namespace),
        ("create", "pods/exec", namespace),
        ("get", "pods/log", namespace),
        ("update", "datasets.kubeloop.io", namespace),
        ("delete", "datasets.kubeloop.io", namespace),
        ("deletecollection", "modelversions.kubeloop.io", namespace),
        ("delete", "modelversions.kubeloop.io", other),
        ("delete", "jobs.batch", namespace),
        ("create", "jobs.batch", other),
        ("list", "jobs.batch", other),
        ("watch", "configmaps", other),
        ("get", "cronjobs.batch", namespace),
        ("update", "cronjobs.batch", namespace),
        ("create", "cronjobs.batch", other),
        ("delete", "cronjobs.batch", other),
        ("create", "batchpredictions.kubeloop.io", namespace),
        ("update", "batchpredictions.kubeloop.io", namespace),
        ("delete", "batchpredictions.kubeloop.io", namespace),
        ("list", "batchpredictions.kubeloop.io", other),
        ("list", "pods", other),
        ("patch", "deployments.apps", other),
        ("list", "datasets.kubeloop.io", other),
        ("get", "networkpolicies.networking.k8s.io", namespace),
        ("update", "networkpolicies.networking.k8s.io", namespace),
        ("create", "networkpolicies.networking.k8s.io", other),
        ("delete", "networkpolicies.networking.k8s.io", None),
        ("create", "serviceaccounts/token", namespace),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("escalate", "roles.rbac.authorization.k8s.io", namespace),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None),
        ("impersonate", "serviceaccounts", namespace),
        ("list", "nodes", None),
        ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ]


def routing_denied_calls(namespace: str, other: str) -> list[tuple[str, str, str | None]]:
    """What the operator may not do although it grants stable pods a Role reading their
    routing ConfigMap: read ConfigMaps elsewhere, change what it made, grant more."""
    return [
        ("get", "configmaps", other),
        ("watch", "configmaps", None),
        ("delete", "configmaps", namespace),
        ("update", "configmaps", namespace),
        ("get", "serviceaccounts", namespace),
        ("delete", "serviceaccounts", namespace),
        ("create", "serviceaccounts", other),
        ("get", "roles.rbac.authorization.k8s.io", namespace),
        ("delete", "roles.rbac.authorization.k8s.io", namespace),
        ("update", "roles.rbac.authorization.k8s.io", namespace),
        ("create", "roles.rbac.authorization.k8s.io", other),
        ("delete", "rolebindings.rbac.authorization.k8s.io", namespace),
        ("create", "rolebindings.rbac.authorization.k8s.io", other),
        ("bind", "roles.rbac.authorization.k8s.io", namespace),
        ("bind", "clusterroles.rbac.authorization.k8s.io", namespace),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ]


def test_rbac_is_exactly_what_the_operator_uses(admin, namespace, ci_namespaces):
    account = f"system:serviceaccount:{namespace}:{SA}"
    with installed(admin, namespace, sets={"crds": {"enabled": False}}):
        # the account's grants beyond what every authenticated user has
        baseline = granted(admin, f"system:serviceaccount:{namespace}:nobody", namespace)
        assert granted(admin, account, namespace) - baseline == NAMESPACED_GRANTS
        other = ci_namespaces[0]
        assert granted(admin, account, other) - baseline == {
            g
            for g in NAMESPACED_GRANTS
            if g[0].startswith(("customresourcedefinitions", "namespaces"))
        }
        denied = denied_calls(namespace, other) + routing_denied_calls(namespace, other)
        allowed = [d for d in denied if can_i(admin, account, *d)]
        assert allowed == [], f"{account} may {allowed}"


def test_cluster_wide_mode_under_its_cluster_role(admin, namespace, api_client, tmp_path, source):
    account = f"system:serviceaccount:{namespace}:{SA}"
    with installed(admin, namespace, "cluster-wide-values.yaml", sets={"crds": {"enabled": False}}):
        assert can_i(admin, account, "create", "jobs.batch", "default")
        assert can_i(admin, account, "patch", "deployments.apps", None)
        assert can_i(admin, account, "delete", "networkpolicies.networking.k8s.io", "default")
        assert can_i(admin, account, "create", "secrets", "default")
        assert can_i(admin, account, "patch", "cronjobs.batch", "default")
        assert can_i(admin, account, "patch", "batchpredictions.kubeloop.io", "default")
        assert can_i(admin, account, "watch", "deployments.apps", None)
        for denied in (
            ("list", "secrets", None),
            ("delete", "jobs.batch", "default"),
            ("get", "cronjobs.batch", "default"),
            ("get", "secrets", "default"),
            ("update", "secrets", "default"),
            ("list", "namespaces", None),
            ("delete", "namespaces", None),
            ("*", "*", None),
            ("create", "pods", "default"),
        ):
            assert not can_i(admin, account, *denied), denied
        docs = manifest(admin, namespace)
        kubeconfig = token_kubeconfig(admin, namespace, SA, tmp_path / "sa.kubeconfig")
        operator = ChartOperator(docs, kubeconfig, None, tmp_path).start()
        assert "--all-namespaces" in operator.args
        cluster = Cluster(api_client, namespace)
        try:
            cluster.apply(dataset("everywhere", source))
            job = cluster.wait_job("kubeloop.io/dataset=everywhere")
            # cluster-wide: no workload ServiceAccount, each namespace's default
            assert "serviceAccountName" not in job["spec"]["template"]["spec"]
            finish_snapshot(cluster, "everywhere", source)
            delete_all(cluster)
        finally:
            operator.stop()
        operator.assert_never_forbidden()


def test_two_replicas_with_kopf_peering_one_active_one_standby(
    admin, namespace, api_client, tmp_path, source, kopf_crds
):
    sets = {"crds": {"enabled": False}, "alertReceiver": {"enabled": False}}
    with installed(
        admin, namespace, "peering-values.yaml", sets={**sets, "watch": {"namespaces": [namespace]}}
    ):
        docs = manifest(admin, namespace)
        assert any(d["kind"] == "KopfPeering" for d in docs)
        kubeconfig = token_kubeconfig(admin, namespace, SA, tmp_path / "sa.kubeconfig")
        first = ChartOperator(docs, kubeconfig, None, tmp_path, name="replica-1").start()
        second: ChartOperator | None = None
        cluster = Cluster(api_client, namespace)
        try:
            assert {"--peering", "--priority=auto"} <= set(first.args)
            # alone, the replica works: it reconciles a Dataset
            cluster.apply(dataset("peered", source))
            cluster.wait_job("kubeloop.io/dataset=peered")
            # its keep-alive is in the KopfPeering's status
            peering = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", "default"
            )
            assert first.env["POD_ID"] in (peering.get("status") or {})
            # a second replica: the one with the lower priority (from its pod name) stands by
            second = ChartOperator(docs, kubeconfig, None, tmp_path, name="replica-2").start()
            active, standby = sorted(
                (first, second),
                key=lambda r: peering_priority("auto", r.env["POD_ID"]),
                reverse=True,
            )
            wait_for(
                lambda: "Pausing operations in favour of" in standby.text(),
                f"{standby.env['POD_ID']} to stand by",
                timeout=60,
                state=standby.tail,
            )
            assert "Pausing" not in active.text()
            # the active replica leaves; the standby takes over and finishes the Dataset
            active.stop()
            wait_for(
                lambda: "Resuming operations" in standby.text(),
                "the standby replica to resume",
                timeout=90,
                state=standby.tail,
            )
            finish_snapshot(cluster, "peered", source)
            delete_all(cluster)
        finally:
            if second is not None:
                second.stop()
            first.stop()
        first.assert_never_forbidden()
        assert second is not None
        second.assert_never_forbidden()


# ---------------------------------------------------------------- upgrade and uninstall


def _crd(admin: Kubectl, name: str) -> dict[str, Any] | None:
    out = admin("get", "crd", name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_upgrade_updates_crds_keeps_the_token_and_uninstall_keeps_crds(
    admin, namespace, core, api_client
):
    # The session installed the CRDs with kubectl; hand them to this release, as one
    # adopts existing objects into Helm.
    for name in CRD_NAMES:
        admin(
            "annotate",
            "--overwrite",
            "crd",
            name,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={namespace}",
        )
        admin("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
    try:
        install(admin, namespace)
        for name in CRD_NAMES:
            crd = _crd(admin, name)
            assert crd is not None
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            assert crd["metadata"]["labels"]["helm.sh/chart"] == "kubeloop-0.1.0"
        token = secret_token(core, namespace)
        cluster = Cluster(api_client, namespace)
        cluster.apply(dataset("survivor", Path("/nonexistent.csv")))

        install(admin, namespace, sets={"commonLabels": {"upgraded": "yes"}}, action="upgrade")
        for name in CRD_NAMES:
            crd = _crd(admin, name)
            assert crd is not None
            assert crd["metadata"]["labels"]["upgraded"] == "yes", "helm upgrade updates CRDs"
        assert secret_token(core, namespace) == token, "the generated token survives upgrades"

        out = helm("uninstall", RELEASE, "--namespace", namespace, kubeconfig=admin.kubeconfig)
        assert "kept due to the resource policy" in out.stdout + out.stderr
        for name in CRD_NAMES:
            assert _crd(admin, name) is not None, f"{name} was deleted"
        assert cluster.get("Dataset", "survivor") is not None
        cluster.delete("Dataset", "survivor")
    finally:
        helm(
            "uninstall", RELEASE, "--namespace", namespace, kubeconfig=admin.kubeconfig, check=False
        )
        for name in CRD_NAMES:
            admin(
                "annotate",
                "crd",
                name,
                "meta.helm.sh/release-name-",
                "meta.helm.sh/release-namespace-",
                "helm.sh/resource-policy-",
                check=False,
            )
        # back to exactly crds/, as the session installed them
        admin("apply", "--server-side", "--force-conflicts", "-f", str(CHART.parents[1] / "crds"))
