"""The real node's life: ``up`` joins it to a running cluster, ``down`` leaves the host clean.

Its four processes (containerd, the API relay, the kubelet, kube-proxy) run in their own
sessions through the cluster's :class:`~kubeloop.devcluster.process.Supervisor` and are
recorded in ``state.json`` in the node's state dir, so that they outlive the command that
started them and ``down`` stops exactly them. ``cluster`` there names the cluster the
node serves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.binaries import Binaries, MissingBinaryError
from kubeloop.devcluster.cluster import Api, DevCluster
from kubeloop.devcluster.errors import ClusterError
from kubeloop.devcluster.node import manifests, render
from kubeloop.devcluster.node.certs import NodeCredentials
from kubeloop.devcluster.node.commands import succeeds
from kubeloop.devcluster.node.config import MANAGER, SERVICE_IP, NodeConfig
from kubeloop.devcluster.node.containerd import Containerd
from kubeloop.devcluster.node.host import Host
from kubeloop.devcluster.node.images import Images
from kubeloop.devcluster.process import Process, Supervisor, wait_for

#: the node's processes in start order (``down`` stops them in reverse)
PROCESSES = ("containerd", "apiserver-relay", "kubelet", "kube-proxy")


def write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` only when its content differs: kube-proxy exits on any write to its
    config file, even of the same bytes, so a second ``up`` must leave it untouched."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class RealNode:
    """A node of cluster ``cfg.cluster`` whose pods run as containers on this host."""

    def __init__(self, cfg: NodeConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.cluster = DevCluster(cfg.cluster)
        self.supervisor = Supervisor(cfg.path("logs"), log=log)
        self.containerd = Containerd(cfg.socket)
        self.host = Host(cfg, log)
        self.images = Images(cfg, log)

    # ------------------------------------------------------------------ state

    @property
    def _state_file(self) -> Path:
        return self.cfg.path("state.json")

    def processes(self) -> dict[str, Process]:
        """The recorded processes by name (alive or not)."""
        try:
            raw = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        return {name: Process(**p) for name, p in raw["processes"].items()}

    def _record(self, processes: dict[str, Process]) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": {n: asdict(p) for n, p in processes.items()}}))
        tmp.replace(self._state_file)

    def alive(self, name: str) -> bool:
        process = self.processes().get(name)
        return process is not None and process.alive()

    def _ensure(self, name: str, argv: list[str]) -> Process:
        """Start ``name``, unless it already runs with this command line."""
        processes = self.processes()
        current = processes.get(name)
        if current is not None and current.alive():
            if current.argv == argv:
                self.log(f"{name} already running (pid {current.pid})")
                return current
            # e.g. the relay towards an earlier cluster's API server port
            self.supervisor.stop([current])
        process = self.supervisor.spawn(name, argv, cwd=self.cfg.state)
        processes[name] = process
        self._record(processes)
        self.log(f"started {name} (pid {process.pid}, log {process.log})")
        return process

    def _wait(
        self, predicate: Callable[[], bool], what: str, seconds: float, *watched: Process
    ) -> None:
        deadline = time.monotonic() + seconds
        wait_for(predicate, what, deadline, lambda: list(watched), f"real node {self.cfg.name!r}")

    def _owner_file(self) -> Path:
        return self.cfg.path("cluster")

    # ------------------------------------------------------------------ up

    def up(self) -> None:
        """Start (or reuse) the node; raise :class:`ClusterError` naming what failed."""
        t0 = time.monotonic()
        self.host.install_packages()
        bins = Binaries.resolve(("kubelet", "kube-proxy"))
        api, port = self._cluster_api()
        # recorded first, so that `cluster down` also cleans up a node that failed half-way
        self._owner_file().parent.mkdir(parents=True, exist_ok=True)
        self._owner_file().write_text(self.cfg.cluster + "\n")
        self.host.setup()
        self._start_containerd()
        self.containerd.import_files(self.images.base())
        self._credentials(port)
        self._join(api, port)
        self._start_kubelet(api, bins["kubelet"])
        self._start_kube_proxy(bins["kube-proxy"])
        if self.cfg.dns:
            self._cluster_dns(api)
        took = time.monotonic() - t0
        self.log(f"node {self.cfg.name} up in {took:.1f}s; pods need imagePullPolicy Never")

    def _cluster_api(self) -> tuple[Api, int]:
        """The admin API of the running cluster, checked to be one a node can join."""
        cluster, name = self.cluster, self.cfg.cluster
        port = cluster.api_port
        if port is None or not cluster.kubeconfig.exists():
            raise ClusterError(
                f"cluster {name!r} is not there: kubeloop cluster up --name {name} --nodes 0"
            )
        api = cluster.api()
        try:
            self._wait(lambda: api.ok("/readyz"), f"the API server of {name!r}", 10)
        except ClusterError as err:
            raise ClusterError(f"{err} (kubeloop cluster status --name {name})") from err
        pki = cluster.pki
        serving = pkimod.alt_names(pki.crt(pkimod.SERVING))
        if not pki.crt("kubelet-client").exists() or SERVICE_IP not in serving:
            raise ClusterError(
                f"cluster {name!r} was started by an older kubeloop (no kubelet-client "
                f"certificate or {SERVICE_IP} address): restart it"
            )
        return api, port

    def _start_containerd(self) -> None:
        for part in (("containerd", "root"), ("containerd", "opt"), ("cni", "net.d")):
            self.cfg.path(*part).mkdir(parents=True, exist_ok=True)
        self.cfg.path("cni", "ipam").mkdir(parents=True, exist_ok=True)
        self.cfg.run.mkdir(parents=True, exist_ok=True)
        write_if_changed(
            self.cfg.path("containerd", "config.toml"), render.containerd_config(self.cfg)
        )
        conflist = self.cfg.path("cni", "net.d", "10-kubeloop-realnode.conflist")
        write_if_changed(conflist, render.cni_conflist(self.cfg))
        t0 = time.monotonic()
        process = self._ensure("containerd", render.containerd_argv(self.cfg))
        self._wait(self.containerd.answers, f"containerd ({self.cfg.socket})", 30, process)
        self.log(f"containerd answers after {time.monotonic() - t0:.1f}s")

    def _credentials(self, port: int) -> None:
        """Kept while they are from the current cluster; never replaced under a running
        kubelet or kube-proxy (they would keep the old ones)."""
        credentials = NodeCredentials(self.cfg, self.cluster.pki)
        if credentials.current(port):
            return
        if self.alive("kubelet") or self.alive("kube-proxy"):
            raise ClusterError(
                "the node's certificates are from another cluster: take the node down first "
                f"(kubeloop cluster down --name {self.cfg.cluster})"
            )
        shutil.rmtree(credentials.pki.dir, ignore_errors=True)
        credentials.issue(port)

    def _join(self, api: Api, port: int) -> None:
        """The node's RBAC and the ``kubernetes`` Service's endpoint: the relay to the API
        server, which listens on loopback only."""
        for obj in manifests.node_objects(self.cfg):
            api.apply(obj, MANAGER)
        self._ensure("apiserver-relay", render.relay_argv(self.cfg, port))

    def _start_kubelet(self, api: Api, kubelet: Path) -> None:
        self.cfg.path("kubelet").mkdir(parents=True, exist_ok=True)
        self.cfg.path("pod-logs").mkdir(parents=True, exist_ok=True)
        client_ca = self.cluster.pki.crt(pkimod.CA)
        write_if_changed(
            self.cfg.path("kubelet-config.yaml"), render.kubelet_config(self.cfg, client_ca)
        )
        t0 = time.monotonic()
        process = self._ensure("kubelet", render.kubelet_argv(self.cfg, kubelet))

        def ready() -> bool:
            code, node = api.request("GET", f"/api/v1/nodes/{self.cfg.name}")
            if code != 200:
                return False
            conditions = node.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        self._wait(ready, f"node {self.cfg.name} Ready", 120, process)
        self.log(f"node {self.cfg.name} Ready after {time.monotonic() - t0:.1f}s")

    def _start_kube_proxy(self, kube_proxy: Path) -> None:
        write_if_changed(
            self.cfg.path("kube-proxy-config.yaml"), render.kube_proxy_config(self.cfg)
        )
        process = self._ensure("kube-proxy", render.kube_proxy_argv(self.cfg, kube_proxy))
        rules = ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]
        self._wait(lambda: succeeds(rules), "kube-proxy's Service rules", 60, process)
        self.log("kube-proxy programs iptables")

    def _cluster_dns(self, api: Api) -> None:
        """CoreDNS behind the kube-dns Service (the kubelet's clusterDNS)."""
        self.containerd.import_file(self.images.coredns())
        for obj in manifests.coredns_objects(self.cfg):
            api.apply(obj, MANAGER)
        t0 = time.monotonic()
        path = "/apis/apps/v1/namespaces/kube-system/deployments/coredns"

        def available() -> bool:
            code, deployment = api.request("GET", path)
            return code == 200 and manifests.deployment_available(deployment)

        try:
            self._wait(available, "CoreDNS to roll out", 120, *self.processes().values())
        except ClusterError as err:
            raise ClusterError(f"{err}\n{self._dns_pods(api)}") from err
        self.log(f"cluster DNS ready after {time.monotonic() - t0:.1f}s")

    @staticmethod
    def _dns_pods(api: Api) -> str:
        """The CoreDNS pods' phases and conditions, for a failure message."""
        query = urlencode({"labelSelector": "k8s-app=kube-dns"})
        with contextlib.suppress(OSError, http.client.HTTPException):
            _, pods = api.request("GET", f"/api/v1/namespaces/kube-system/pods?{query}")
            return json.dumps([p.get("status") for p in (pods or {}).get("items", [])], indent=1)
        return "(the CoreDNS pods could not be listed)"

    # ------------------------------------------------------------------ down

    def down(self) -> None:
        """Stop the node's pods and processes and undo what the node changed on the host."""
        self._drain()
        processes = self.processes()
        self.supervisor.stop(
            [processes[n] for n in reversed(PROCESSES) if n in processes and n != "containerd"],
            timeout=20,
        )
        if self.containerd.answers():
            self.containerd.remove_all()
        if "containerd" in processes:
            self.supervisor.stop([processes["containerd"]], timeout=20)
        self.host.clean(self._kube_proxy_binary())
        self._state_file.unlink(missing_ok=True)
        self._owner_file().unlink(missing_ok=True)
        self.log(f"down (kept: images and containerd's content in {self.cfg.state})")

    def _drain(self) -> None:
        """While the API answers, let the kubelet stop the pods properly (CNI DEL,
        unmounts); cordoned first, or controllers put replacements straight back."""
        if not self.alive("kubelet"):
            return
        node = f"/api/v1/nodes/{self.cfg.name}"
        try:
            api = self.cluster.api()
            if api.request("GET", node)[0] != 200:
                return
            cordon = {"spec": {"unschedulable": True}}
            api.request("PATCH", node, cordon, content_type="application/merge-patch+json")
            self._delete_pods(api)
            with contextlib.suppress(ClusterError):
                self._wait(self._pods_stopped, "the node's pods to stop", 30)
            api.request("DELETE", node)
        except (ClusterError, OSError, http.client.HTTPException) as err:
            self.log(f"could not drain the node ({err}); stopping it regardless")

    def _pods_stopped(self) -> bool:
        """No container of the node runs (stopped tasks stay listed until removed)."""
        return not self.containerd.tasks_running()

    def _delete_pods(self, api: Api) -> None:
        query = urlencode({"fieldSelector": f"spec.nodeName={self.cfg.name}"})
        _, pods = api.request("GET", f"/api/v1/pods?{query}")
        for pod in (pods or {}).get("items", []):
            meta = pod["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            api.request("DELETE", f"{path}?gracePeriodSeconds=2")

    @staticmethod
    def _kube_proxy_binary() -> Path | None:
        try:
            return Binaries.resolve(("kube-proxy",))["kube-proxy"]
        except MissingBinaryError:
            return None

    # ------------------------------------------------------------------ images

    def load(self, files: list[Path], stream: IO[bytes] | None = None) -> None:
        """Import docker-archive or OCI tarballs (``files``, or ``stream``) into the
        node's containerd, where pods with ``imagePullPolicy: Never`` find them."""
        if not self.containerd.answers():
            raise ClusterError("the real node is not up: kubeloop cluster up --real")
        self.containerd.import_files(files)
        if stream is not None:
            self.containerd.import_stream(stream)

    def status(self) -> dict[str, Any]:
        """Each process: alive, pid, log."""
        return {
            name: {"alive": p.alive(), "pid": p.pid, "log": p.log}
            for name, p in self.processes().items()
        }
