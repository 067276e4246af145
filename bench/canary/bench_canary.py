"""How exact and how fast the canary split is: the measured share per step against its
target, and the time from a weight change until every stable pod routes by it.

Real parts: a real control plane (``kubeloop.devcluster``: etcd, kube-apiserver,
controller-manager), real ``kubeloop serve`` processes on loopback playing the stable pods
(``--pods``, one worker each) and one canary, and the routing ConfigMap, ServiceAccount, Role
and RoleBinding the operator renders (``builders``). The bench plays the kubelet: it
refreshes each stable pod's mounted routing file at its own random moment within the sync
period (``--sync``, seconds; the kubelet's default is 60, the dev node's 10).

- **before** (file): the pods read the mounted file alone, as they did before the API watch;
- **after** (watch): the pods follow the ConfigMap through the API with the rendered Role's
  token (the file still arrives late and is ignored while the watch is live).

Per step the bench changes the weight, then sends ``--requests`` requests spread over the
stable pods as a Service would, and counts those the canary answered
(``x-kubeloop-variant: canary``); propagation is from the change until every pod's
``kubeloop_canary_weight`` shows the new weight.

Not a test: run with ``make bench-canary``.

    python bench/canary/bench_canary.py [--pods 3] [--requests 2000] [--sync 10]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "component" / "serving"), str(ROOT / "tests")]

from serving_helpers import Server, serving, train  # noqa: E402

from kubeloop.contracts.routing import ROUTING_FILE, RoutingConfig  # noqa: E402
from kubeloop.devcluster import DevCluster  # noqa: E402
from kubeloop.operator import builders  # noqa: E402
from kubeloop.operator.settings import OperatorSettings  # noqa: E402

MD = "bench"
STEPS = (5, 10, 20, 33, 50, 90, 100, 0)


@dataclass
class Row:
    mode: str
    target: int
    requests: int
    canary: int
    propagation: float

    @property
    def share(self) -> float:
        return 100 * self.canary / self.requests


class Kubelet:
    """Plays the kubelet's ConfigMap volume: each pod's file is refreshed at its own random
    moment within the sync period (atomically, as the kubelet swaps a symlink)."""

    def __init__(self, files: list[Path], sync: float, seed: int = 0) -> None:
        self.files, self.sync, self._rng = files, sync, random.Random(seed)
        self._timers: list[threading.Timer] = []

    def publish(self, text: str) -> None:
        for path in self.files:
            timer = threading.Timer(self._rng.uniform(0, self.sync), self._write, (path, text))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()


def model(work: Path) -> tuple[Path, str]:
    """A model from the real trainer, and one request body for it."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    data = work / "cancer.csv"
    frame.to_csv(data, index=False)
    out = train(data, "target", "classification", "LogisticRegression", work / "model",
                '{"max_iter": 2000}')  # fmt: skip
    row = frame.drop(columns=["target"]).iloc[:1]
    values = row.to_numpy(np.float32).ravel().tolist()
    tensor = {"name": "x", "shape": list(row.shape), "datatype": "FP32", "data": values}
    return out, json.dumps({"inputs": [tensor]})


@contextmanager
def control_plane() -> Iterator[tuple[str, client.CoreV1Api]]:
    dev = DevCluster(f"bench-canary-{secrets.token_hex(2)}", bind_to_parent=True)
    try:
        path = str(dev.up(nodes=1, timeout=180))
        api = config.new_client_from_config(config_file=path)
        yield path, client.CoreV1Api(api)
        api.close()
    finally:
        dev.down()


def grant(kubeconfig: str, core: client.CoreV1Api, ns: str, work: Path) -> dict[str, str]:
    """The rendered ServiceAccount/Role/RoleBinding, and the settings that point a server at
    the API with that account's token."""
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    md = {"kind": "ModelDeployment", "metadata": {"name": MD, "namespace": ns, "uid": "0" * 36}}
    account, role, binding = builders.build_routing_access(md, OperatorSettings())
    for obj in (account, role, binding):
        obj["metadata"].pop("ownerReferences")  # no ModelDeployment here
    core.create_namespaced_service_account(ns, account)
    rbac.create_namespaced_role(ns, role)
    rbac.create_namespaced_role_binding(ns, binding)
    names = builders.serving_names(MD)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token(names["router"], ns, request)
    (work / "token").write_text(token.status.token)
    cluster = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]
    (work / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return {
        "KUBELOOP_SERVING_ROUTING_CONFIGMAP": names["routing"],
        "KUBELOOP_SERVING_ROUTING_NAMESPACE": ns,
        "KUBELOOP_SERVING_KUBE_API_URL": cluster["server"],
        "KUBELOOP_SERVING_KUBE_TOKEN_FILE": str(work / "token"),
        "KUBELOOP_SERVING_KUBE_CA_FILE": str(work / "ca.crt"),
    }


def weights(pods: list[Server]) -> list[float | None]:
    return [p.metric("kubeloop_canary_weight", model="cancer", mode="forward") for p in pods]


def split(pods: list[Server], body: str, n: int) -> int:
    """Requests the canary answered out of ``n``, spread over the pods in turn."""
    clients = [p.client() for p in pods]

    def one(i: int) -> bool:
        r = clients[i % len(clients)].post(
            "/v2/models/cancer/infer", content=body, headers={"content-type": "application/json"}
        )
        r.raise_for_status()
        return r.headers.get("x-kubeloop-variant") == "canary"

    try:
        with ThreadPoolExecutor(8) as pool:
            return sum(pool.map(one, range(n)))
    finally:
        for c in clients:
            c.close()


def propagation(pods: list[Server], target: int, started: float, deadline: float) -> float:
    """Seconds from ``started`` until every pod shows ``target`` (polled in a thread while
    the traffic runs)."""
    while time.monotonic() < started + deadline:
        if all(w == target for w in weights(pods)):
            return time.monotonic() - started
        time.sleep(0.02)
    return float("nan")


def run_mode(
    mode: str, pods: list[Server], kubelet: Kubelet, core: client.CoreV1Api, ns: str,
    canary_url: str, body: str, n: int, sync: float,
) -> list[Row]:  # fmt: skip
    rows = []
    for target in STEPS:
        text = RoutingConfig(url=canary_url, weight=target, canary_version=2).to_file()
        started = time.monotonic()
        core.patch_namespaced_config_map(f"{MD}-routing", ns, {"data": {ROUTING_FILE: text}})
        kubelet.publish(text)
        with ThreadPoolExecutor(1) as watch:
            took = watch.submit(propagation, pods, target, started, sync + 30)
            canary = split(pods, body, n)
            rows.append(Row(mode, target, n, canary, took.result()))
        print(
            f"  {mode}: weight {target}%: {rows[-1].share:.1f}%, {rows[-1].propagation:.2f}s",
            file=sys.stderr,
        )
    return rows


def measure(pods: int, n: int, sync: float, work: Path) -> list[Row]:
    model_dir, body = model(work)
    rows: list[Row] = []
    with control_plane() as (kubeconfig, core), serving(model_dir, "--name", "cancer") as canary:
        for mode in ("before", "after"):
            ns = f"bench-{mode}-{secrets.token_hex(3)}"
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            folder = work / ns
            folder.mkdir()
            first = RoutingConfig(url=canary.url, weight=0, canary_version=2).to_file()
            meta = client.V1ObjectMeta(name=f"{MD}-routing")
            cm = client.V1ConfigMap(metadata=meta, data={ROUTING_FILE: first})
            core.create_namespaced_config_map(ns, cm)
            env = grant(kubeconfig, core, ns, folder) if mode == "after" else {}
            files = [folder / f"pod{i}.json" for i in range(pods)]
            for f in files:
                f.write_text(first)
            kubelet = Kubelet(files, sync)
            with ExitStack() as stack:
                servers = [
                    stack.enter_context(
                        serving(model_dir, "--name", "cancer", "--routing-file", str(f), env=env)
                    )
                    for f in files
                ]
                rows += run_mode(mode, servers, kubelet, core, ns, canary.url, body, n, sync)
                kubelet.stop()
    return rows


def table(rows: list[Row], sync: float, pods: int) -> str:
    head = (f"{'target %':>9} | {'before: split %':>15} {'error pp':>9} {'propagation s':>14} | "
            f"{'after: split %':>14} {'error pp':>9} {'propagation s':>14}")  # fmt: skip
    lines = [head, "-" * len(head)]
    before = {r.target: r for r in rows if r.mode == "before"}
    after = {r.target: r for r in rows if r.mode == "after"}
    for target in STEPS:
        b, a = before[target], after[target]
        lines.append(
            f"{target:9d} | {b.share:15.1f} {b.share - target:+9.1f} {b.propagation:14.2f} | "
            f"{a.share:14.1f} {a.share - target:+9.1f} {a.propagation:14.2f}"
        )
    worst_b = max(abs(r.share - r.target) for r in before.values())
    worst_a = max(abs(r.share - r.target) for r in after.values())
    lines.append(
        f"{pods} stable pods, {rows[0].requests} requests per step sent right after the change; "
        f"before = mounted file refreshed within a {sync:g} s sync period, after = API watch. "
        f"Worst error: before {worst_b:.1f} pp, after {worst_a:.1f} pp."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sync", type=float, default=10.0, help="kubelet sync period (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        rows = measure(args.pods, args.requests, args.sync, Path(tmp))
    print(table(rows, args.sync, args.pods))


if __name__ == "__main__":
    main()
