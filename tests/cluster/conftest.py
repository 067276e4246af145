"""The cluster tier: one real control plane per test session.

The session starts ``kubeloop.devcluster`` (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok with two fake nodes) on free
loopback ports under a unique name, installs the CRDs from ``crds/`` and tears
everything down at the end, also when tests fail. Set
``KUBELOOP_TEST_KUBECONFIG`` to run against an existing cluster instead.

Fixtures:

- ``kubeconfig`` (session) -> ``str``: path of an admin kubeconfig
- ``api_client`` (session) -> ``kubernetes.client.ApiClient``
- ``core`` (session) -> ``kubernetes.client.CoreV1Api``
- ``kubectl_bin`` (session) -> ``str``: the kubectl binary
- ``namespace`` (per test) -> ``str``: a fresh namespace whose ``default``
  ServiceAccount exists; deleted after the test
- ``kubectl`` (per test) -> ``kubetest.Kubectl``: ``kubectl(*args, input=None,
  check=True)`` with the kubeconfig and the test's namespace;
  ``kubectl.json(...)``, ``kubectl.apply(*docs)``
- ``store`` (per test) -> ``Path``: an empty local artifact store
- ``operator`` (per test) -> ``OperatorProcess``: the operator on the test's namespace and
  ``store``; every Kubeloop object deleted after the test
- ``kopf_crds`` (session): kopf's peering CRDs from the chart's ``crds/``

Helper modules, importable from test files here: ``kubetest`` (``wait_for``,
``Kubectl``, ``stop_group``) and ``kubelet`` (``job_pod``, ``finish_pod``, ``finish_job``);
from every tier: ``needs`` (a missing tool fails saying how to get it) and ``helmchart``
(``helm template``/``install`` with the toolchain's helm), in tests/.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KOPF_CRDS = ROOT / "charts" / "kubeloop" / "crds" / "kopf-peering.yaml"
NODES = 2

# --import-mode=importlib puts no test dir on sys.path; the helpers live here.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubetest import Kubectl, install_crds, new_namespace  # noqa: E402
from operator_harness import Cluster, OperatorProcess, operating  # noqa: E402

from needs import missing  # noqa: E402


def _say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr)


def _kubectl_binary() -> str:
    """The toolchain's kubectl, else one on PATH, else a failure saying how to build it."""
    from kubeloop.devcluster.binaries import Binaries, MissingBinaryError

    try:
        return str(Binaries.resolve(("kubectl",))["kubectl"])
    except MissingBinaryError as err:
        return shutil.which("kubectl") or missing("kubectl", str(err))


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    return _kubectl_binary()


@pytest.fixture(scope="session")
def kubeconfig(kubectl_bin: str) -> Iterator[str]:
    external = os.environ.get("KUBELOOP_TEST_KUBECONFIG")
    if external:
        install_crds(Kubectl(kubectl_bin, external))
        yield external
        return

    from kubeloop.devcluster import DevCluster
    from kubeloop.devcluster.cluster import prune_abandoned

    for name in prune_abandoned("pytest-"):
        _say(f"removed {name}, left behind by a session that did not stop it")
    dev = DevCluster(f"pytest-{os.getpid()}-{secrets.token_hex(2)}", bind_to_parent=True, log=_say)
    try:
        path = dev.up(nodes=NODES, timeout=180)
        install_crds(Kubectl(kubectl_bin, path))
        yield str(path)
    finally:
        dev.down()


@pytest.fixture(scope="session")
def api_client(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = new_namespace(core, f"{stem or 't'}-{secrets.token_hex(3)}")
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture
def kubectl(kubectl_bin: str, kubeconfig: str, namespace: str) -> Kubectl:
    return Kubectl(kubectl_bin, kubeconfig, namespace)


@pytest.fixture
def cluster(api_client: client.ApiClient, namespace: str) -> Cluster:
    """The test's namespace, through the helpers the operator tests share."""
    return Cluster(api_client, namespace)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty artifact store (a local folder) for the test."""
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def operator(
    kubeconfig: str, api_client: client.ApiClient, namespace: str, store: Path, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """``kubeloop operator`` as a process watching the test's namespace, artifacts in
    ``store``; afterwards every Kubeloop object is deleted (finalizers released) and it stops."""
    proc = OperatorProcess(kubeconfig, namespace, store.as_uri(), tmp_path / "operator.log")
    with operating(proc, api_client) as running:
        yield running


@pytest.fixture(scope="session")
def kopf_crds(kubectl_bin: str, kubeconfig: str) -> None:
    """kopf's peering CRDs, installed the way Helm installs a chart's crds/ (create if missing)."""
    admin = Kubectl(kubectl_bin, kubeconfig)
    admin("apply", "--server-side", "-f", str(KOPF_CRDS))
    admin(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        timeout=90,
    )
