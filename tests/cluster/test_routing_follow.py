"""A real ``kubeloop serve`` follows its routing ConfigMap on a real kube-apiserver.

The stable server runs as a local process with the token of the ServiceAccount the
operator renders for a ModelDeployment's stable pods (``kubectl create token``), bound by
the rendered Role that may read that one ConfigMap. Patching the ConfigMap changes the
server's split within a deadline (no kubelet, no mounted file); a malformed ConfigMap is
ignored and the last good routing kept; the token reads nothing else.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from kubetest import Kubectl, wait_for

from kubeloop.contracts.routing import RoutingConfig
from kubeloop.operator import builders
from kubeloop.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "component" / "serving"))
from serving_helpers import Server, serving, train  # noqa: E402

MD = "demo"
#: seconds from a ConfigMap patch to the server routing by it
DEADLINE = 3.0


@pytest.fixture(scope="module")
def rows_and_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, Path]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    data = tmp_path_factory.mktemp("data") / "cancer.csv"
    frame.to_csv(data, index=False)
    out = tmp_path_factory.mktemp
    stable = train(data, "target", "classification", "LogisticRegression", out("v1"),
                   '{"max_iter": 2000}')  # fmt: skip
    canary = train(data, "target", "classification", "LogisticRegression", out("v2"),
                   '{"C": 0.05, "max_iter": 2000}')  # fmt: skip
    return frame.drop(columns=["target"]), stable, canary


def owned_by_nothing(obj: dict[str, Any]) -> dict[str, Any]:
    """The rendered object without its owner (no ModelDeployment exists here, and the
    garbage collector deletes what a missing owner owns)."""
    obj["metadata"].pop("ownerReferences", None)
    return obj


def routing_configmap(config: RoutingConfig | str) -> dict[str, Any]:
    text = config if isinstance(config, str) else config.to_file()
    return {"data": {"routing.json": text}}


def api_access(kubeconfig: str, kubectl: Kubectl, workdir: Path) -> dict[str, str]:
    """The settings pointing a server at the API with the stable pods' token."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = doc["clusters"][0]["cluster"]
    ca = workdir / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    token = workdir / "token"
    names = builders.serving_names(MD)
    token.write_text(kubectl("create", "token", names["router"]).stdout.strip())
    return {
        "KUBELOOP_SERVING_ROUTING_CONFIGMAP": names["routing"],
        "KUBELOOP_SERVING_ROUTING_NAMESPACE": kubectl.namespace or "",
        "KUBELOOP_SERVING_KUBE_API_URL": cluster["server"],
        "KUBELOOP_SERVING_KUBE_TOKEN_FILE": str(token),
        "KUBELOOP_SERVING_KUBE_CA_FILE": str(ca),
    }


def body(rows: pd.DataFrame) -> str:
    data = rows.to_numpy(np.float32).ravel().tolist()
    return json.dumps(
        {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}]}
    )


def variants(
    server: Server, payload: str, n: int, headers: dict[str, str] | None = None
) -> list[str]:
    def one(_: int) -> str:
        r = http.post("/v2/models/cancer/infer", content=payload, headers=sent)
        assert r.status_code == 200, r.text
        return r.headers.get("x-kubeloop-variant", "stable")

    sent = {"content-type": "application/json", **(headers or {})}
    with server.client() as http, ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def weight(server: Server) -> float | None:
    return server.metric("kubeloop_canary_weight", model="cancer", mode="forward")


def patched_within_deadline(kubectl: Kubectl, server: Server, config: RoutingConfig) -> float:
    """Patch the ConfigMap; return the seconds until the server routes by it."""
    name = builders.serving_names(MD)["routing"]
    patch = json.dumps(routing_configmap(config))
    started = time.monotonic()
    kubectl("patch", "configmap", name, "--type=merge", "-p", patch)
    wait_for(lambda: weight(server) == config.weight, f"weight {config.weight}", timeout=DEADLINE,
             interval=0.02)  # fmt: skip
    return time.monotonic() - started


@pytest.fixture
def routed(
    kubeconfig: str, kubectl: Kubectl, rows_and_models: tuple[pd.DataFrame, Path, Path],
    tmp_path: Path,
) -> Iterator[tuple[Server, Server, str]]:  # fmt: skip
    rows, stable_model, canary_model = rows_and_models
    md = {
        "kind": "ModelDeployment",
        "metadata": {"name": MD, "namespace": kubectl.namespace, "uid": "0" * 36},
    }
    settings = OperatorSettings(artifact_root="file:///data")
    kubectl.apply(*(owned_by_nothing(o) for o in builders.build_routing_access(md, settings)))
    with serving(canary_model, "--name", "cancer") as canary:
        start = RoutingConfig(url=canary.url, weight=0, canary_version=2)
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{MD}-routing"}}
        kubectl.apply({**cm, **routing_configmap(start)})
        env = api_access(kubeconfig, kubectl, tmp_path)
        env["KUBELOOP_SERVING_ROUTING_WATCH_SECONDS"] = "1"  # resumes are exercised too
        with serving(stable_model, "--name", "cancer", env=env) as stable:
            wait_for(lambda: "following ConfigMap through the API: True" in stable.log,
                     "the server to follow the ConfigMap")  # fmt: skip
            yield stable, canary, body(rows.iloc[:1])


def test_a_patched_weight_reaches_the_server_within_the_deadline(kubectl, routed):
    stable, canary, payload = routed
    assert set(variants(stable, payload, 40)) == {"stable"}
    for share in (20, 50, 5):
        config = RoutingConfig(url=canary.url, weight=share, canary_version=2)
        took = patched_within_deadline(kubectl, stable, config)
        seen = variants(stable, payload, 400)
        print(f"weight {share}: applied after {took:.2f}s, canary {seen.count('canary') / 4}%")
        assert abs(100 * seen.count("canary") / 400 - share) <= 2


def test_a_malformed_configmap_keeps_the_last_good_routing(kubectl, routed):
    stable, canary, payload = routed
    patched_within_deadline(kubectl, stable, RoutingConfig(url=canary.url, weight=20))
    name = builders.serving_names(MD)["routing"]
    for bad in ('{"canary_url": "http://x", "weight": 250}', "{oops", '["a list"]'):
        before = stable.log.count("rejected, keeping the routing")
        kubectl("patch", "configmap", name, "--type=merge", "-p",
                json.dumps(routing_configmap(bad)))  # fmt: skip
        wait_for(lambda n=before: stable.log.count("rejected, keeping the routing") > n,
                 "the server to reject the ConfigMap")  # fmt: skip
        assert weight(stable) == 20
        seen = variants(stable, payload, 200)
        assert seen.count("canary") == 40  # exactly 20%: the last good routing
    # and a good one after the bad ones applies as usual
    patched_within_deadline(kubectl, stable, RoutingConfig(url=canary.url, weight=50))


def test_a_sticky_caller_stays_on_one_version(kubectl, routed):
    stable, canary, payload = routed
    config = RoutingConfig(url=canary.url, weight=50, canary_version=2, sticky_header="x-user")
    patched_within_deadline(kubectl, stable, config)
    for user in ("alice", "bob", "carol", "dave"):
        assert len(set(variants(stable, payload, 20, {"X-User": user}))) == 1
    mixed = variants(stable, payload, 400)  # without the header: round-robin
    assert mixed.count("canary") == 200


def test_the_token_reads_that_configmap_and_nothing_else(kubeconfig, kubectl, routed, tmp_path):
    env = api_access(kubeconfig, kubectl, tmp_path)
    api, ns = env["KUBELOOP_SERVING_KUBE_API_URL"], env["KUBELOOP_SERVING_ROUTING_NAMESPACE"]
    token = Path(env["KUBELOOP_SERVING_KUBE_TOKEN_FILE"]).read_text()
    kubectl("create", "configmap", "other", "--from-literal=a=b")
    own = f"{api}/api/v1/namespaces/{ns}/configmaps"
    with httpx.Client(
        verify=ssl.create_default_context(cafile=env["KUBELOOP_SERVING_KUBE_CA_FILE"]),
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        assert http.get(f"{own}/{MD}-routing").status_code == 200
        assert (
            http.get(own, params={"fieldSelector": f"metadata.name={MD}-routing"}).status_code
            == 200
        )
        for path in (f"{own}/other", own, f"{api}/api/v1/namespaces/{ns}/secrets",
                     f"{api}/api/v1/namespaces/{ns}/pods", f"{api}/api/v1/configmaps"):  # fmt: skip
            assert http.get(path).status_code == 403, path
        assert (
            http.patch(
                f"{own}/{MD}-routing",
                content="{}",
                headers={"content-type": "application/merge-patch+json"},
            ).status_code
            == 403
        )


def test_a_watch_the_server_ends_resumes_and_still_follows(kubectl, routed):
    """The API server ends each watch after ``routing_watch_seconds`` (1 s here); the next
    one resumes from the last resourceVersion and changes still arrive."""
    stable, canary, _ = routed
    wait_for(lambda: stable.log.count("routing watch: ended by the server") >= 2,
             "two watches ended by the API server", timeout=30)  # fmt: skip
    took = patched_within_deadline(kubectl, stable, RoutingConfig(url=canary.url, weight=33))
    assert took < DEADLINE


def test_without_the_api_the_mounted_file_routes(rows_and_models, tmp_path):
    """An API server that cannot be reached (or a token it refuses) loses nothing: the
    routing file is the start-up value and is followed as before."""
    _, stable_model, canary_model = rows_and_models
    token = tmp_path / "token"
    token.write_text("not-a-token")
    routing = tmp_path / "routing.json"
    with serving(canary_model, "--name", "cancer") as canary:
        routing.write_text(RoutingConfig(url=canary.url, weight=20).to_file())
        env = {
            "KUBELOOP_SERVING_ROUTING_CONFIGMAP": "demo-routing",
            "KUBELOOP_SERVING_ROUTING_NAMESPACE": "nowhere",
            "KUBELOOP_SERVING_KUBE_API_URL": f"https://127.0.0.1:{closed_port()}",
            "KUBELOOP_SERVING_KUBE_TOKEN_FILE": str(token),
            "KUBELOOP_SERVING_CONFIG_POLL_INTERVAL": "0.1",
        }
        args = ("--name", "cancer", "--routing-file", str(routing))
        with serving(stable_model, *args, env=env) as stable:
            assert weight(stable) == 20
            wait_for(lambda: "routing watch:" in stable.log, "the watch to report its failure")
            routing.write_text(RoutingConfig(url=canary.url, weight=50).to_file())
            wait_for(lambda: weight(stable) == 50, "the file's new weight")


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
