"""Small helpers for cluster tests: polling with a deadline, kubectl, the CRDs, stopping
processes."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
from base64 import b64decode
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def wait_for(
    predicate: Callable[[], T],
    what: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    state: Callable[[], Any] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    On timeout, fail saying what was awaited and, if ``state`` is given, what
    was seen last.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = ""
            if state is not None:
                seen = "\nlast seen: " + json.dumps(state(), default=str, indent=1)[:4000]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
        time.sleep(interval)


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM the process group ``proc`` leads (``start_new_session``), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class KubectlError(AssertionError):
    """kubectl exited non-zero where success was expected."""


class Kubectl:
    """``kubectl`` with a fixed kubeconfig (and, optionally, namespace)."""

    def __init__(self, binary: str | Path, kubeconfig: str | Path, namespace: str | None = None):
        self.binary = str(binary)
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace

    def in_namespace(self, namespace: str | None) -> Kubectl:
        return Kubectl(self.binary, self.kubeconfig, namespace)

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}"]
        if self.namespace:
            argv.append(f"--namespace={self.namespace}")
        argv.extend(args)
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"{' '.join(argv[1:])} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """Server-side apply of the given objects."""
        return self(
            "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False)
        )


def install_crds(kubectl: Kubectl) -> None:
    """Server-side apply ``crds/`` and wait until every CRD is Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    names = [f"crd/{p.name.removesuffix('.yaml')}" for p in sorted(CRD_DIR.glob("*.yaml"))]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=90)


def server_and_tls(kubeconfig: str | Path) -> tuple[str, ssl.SSLContext]:
    """The current context's server URL and a TLS context trusting its CA (no client cert)."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    context_name = doc["current-context"]
    context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    tls = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        with tempfile.NamedTemporaryFile("wb", suffix=".crt") as ca:
            ca.write(b64decode(cluster["certificate-authority-data"]))
            ca.flush()
            tls.load_verify_locations(ca.name)
    elif "certificate-authority" in cluster:
        tls.load_verify_locations(cluster["certificate-authority"])
    return cluster["server"], tls


def new_namespace(core: Any, name: str) -> str:
    """Create namespace ``name`` and wait for its ``default`` ServiceAccount, which the
    Job controller needs (kube-controller-manager makes it)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    wait_for(default_sa, f"ServiceAccount {name}/default (kube-controller-manager)")
    return name
