"""Running the operator as a real process against the test cluster, and waiting on it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kubelet import job_pod
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError
from kubetest import wait_for

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
GROUP_VERSION = "kubeloop.io/v1alpha1"
#: The Kubeloop kinds, in the order a test deletes them.
KINDS = ("BatchPrediction", "ModelDeployment", "TrainingJob", "ModelVersion", "Dataset")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``kubeloop operator --namespace NS`` as a subprocess, restartable."""

    def __init__(self, kubeconfig: str, namespace: str, artifact_root: str, log: Path) -> None:
        self.namespace = namespace
        self.log = log
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "KUBELOOP_ARTIFACT_ROOT": artifact_root,
            "KUBELOOP_RESYNC_SECONDS": "1",
            "KUBELOOP_METRICS_PORT": "0",
        }
        #: More ``kubeloop operator`` arguments (e.g. ``--peering --priority N``).
        self.args: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                KUBELOOP,
                "operator",
                "--namespace",
                self.namespace,
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
                *self.args,
            ],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: _healthy(port), f"operator liveness on port {port}", timeout=60)
        except AssertionError as exc:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{exc}\noperator log:\n{tail}") from None

    def kill(self) -> None:
        """SIGKILL: the harshest restart, nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Cluster:
    """Typed-enough access to the test cluster for assertions."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.dyn = DynamicClient(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def _res(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["namespace"] = self.namespace
        res = self._res(obj["apiVersion"], obj["kind"])
        created: dict[str, Any] = res.create(body=obj, namespace=self.namespace).to_dict()
        return created

    def get(self, kind: str, name: str, api_version: str = GROUP_VERSION) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = (
                self._res(api_version, kind).get(name=name, namespace=self.namespace).to_dict()
            )
            return found
        except NotFoundError:
            return None

    def list(
        self, kind: str, api_version: str = GROUP_VERSION, selector: str | None = None
    ) -> list[dict[str, Any]]:
        items = self._res(api_version, kind).get(namespace=self.namespace, label_selector=selector)
        return [i.to_dict() for i in items.items]

    def patch(
        self, kind: str, name: str, body: dict[str, Any], api_version: str = GROUP_VERSION
    ) -> None:
        self._res(api_version, kind).patch(
            body=body,
            name=name,
            namespace=self.namespace,
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, name: str, api_version: str = GROUP_VERSION) -> None:
        with contextlib.suppress(NotFoundError, ApiException):
            self._res(api_version, kind).delete(name=name, namespace=self.namespace)

    def delete_all(self, kinds: tuple[str, ...], timeout: float = 120) -> None:
        """Delete every object of ``kinds`` and wait until they are gone (finalizers released:
        by an operator that may have just been restarted, so the deadline is generous)."""
        for kind in kinds:
            for obj in self.list(kind):
                self.delete(kind, obj["metadata"]["name"])
        wait_for(
            lambda: not any(self.list(k) for k in kinds),
            "Kubeloop objects to be deleted (finalizers released)",
            timeout=timeout,
            state=lambda: {k: [o["metadata"]["name"] for o in self.list(k)] for k in kinds},
        )

    def status(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, name)
        return dict((obj or {}).get("status") or {})

    def wait_phase(self, kind: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        """The object's status, once its ``phase`` is ``phase``."""
        return wait_for(
            lambda: self.status(kind, name).get("phase") == phase and self.status(kind, name),
            f"{kind} {name} to be {phase}",
            timeout=timeout,
            state=lambda: self.get(kind, name),
        )

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict[str, Any]:
        for c in self.status(kind, name).get("conditions") or []:
            if c.get("type") == type_:
                return dict(c)
        return {}

    def events(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(self.namespace).items
        return [e.reason for e in events if e.involved_object.name == name]

    def wait_job(self, selector: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: next(iter(self.list("Job", "batch/v1", selector)), None),
            f"a Job with {selector}",
            timeout=timeout,
        )


P = TypeVar("P", bound=OperatorProcess)


@contextmanager
def operating(proc: P, api_client: client.ApiClient) -> Iterator[P]:
    """``proc`` running for the test; afterwards every Kubeloop object deleted, then it stops.

    The operator holds finalizers on what it times, so it must run (again, if the
    test killed it) until the objects are gone.
    """
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is None or proc.proc.poll() is not None:
            proc.start()
        Cluster(api_client, proc.namespace).delete_all(KINDS)
        proc.stop()


def pod_of(cluster: Cluster, job_name: str) -> dict[str, Any]:
    """The pod the Job controller made for ``job_name``, as a dict."""
    pod: dict[str, Any] = job_pod(cluster.core, cluster.namespace, job_name).to_dict()
    return pod


def container_env(core: client.CoreV1Api, namespace: str, job: dict[str, Any]) -> dict[str, str]:
    """The environment a kubelet gives the Job's container: each ``value``, and each
    ``valueFrom.secretKeyRef`` read from the Secret in the API server (an ``optional``
    one whose Secret or key is missing left unset, as a kubelet does)."""
    env: dict[str, str] = {}
    for var in job["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            env[var["name"]] = var.get("value", "")
            continue
        try:
            data = core.read_namespaced_secret(ref["name"], namespace).data or {}
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                continue
            raise
        if ref["key"] in data or not ref.get("optional"):
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def run_job_locally(
    job: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a trainer Job's command here, as its container would, and return (exit code, message).

    The spec the operator put in the pod annotation is written to a file and
    the container's path to it is rewritten; the termination message is read
    from the file the command writes, like the kubelet does. ``env`` is the
    container's environment (:func:`container_env`), if the test resolved it.
    """
    from kubeloop.operator import builders

    template = job["spec"]["template"]
    args = list(template["spec"]["containers"][0]["args"])
    spec_json = (template["metadata"].get("annotations") or {}).get(builders.SPEC_ANNOTATION)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "spec.json"
    if spec_json is not None:
        spec_file.write_text(spec_json)
    args = [str(spec_file) if a == builders.SPEC_PATH else a for a in args]
    term = workdir / "termination-log"
    term.write_text("")
    proc = subprocess.run(
        [KUBELOOP, *args],
        env={**os.environ, **(env or {}), "KUBELOOP_TERMINATION_LOG": str(term)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    message = term.read_text() or "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
    return proc.returncode, message
