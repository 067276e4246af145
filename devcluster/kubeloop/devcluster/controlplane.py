"""The command lines of the control plane's processes, as pure functions of its layout.

:class:`ControlPlane` knows where a cluster's files are and which ports it got; each
method returns one process's argv and starts nothing, so ``cluster.py`` only decides
the order and the waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.binaries import Binaries
from kubeloop.devcluster.stages import NODE_ANNOTATION, NODE_ANNOTATION_VALUE

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: the loopback ports a cluster takes, picked free at start
PORT_NAMES = ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler")
#: the client certificates that get a kubeconfig (admin's is ``kubeconfig`` itself)
KUBECONFIG_USERS = ("admin", "controller-manager", "scheduler", "kwok")


@dataclass(frozen=True)
class ControlPlane:
    """One cluster's directory, name, ports, certificates and binaries."""

    dir: Path
    name: str
    ports: dict[str, int]
    pki: pkimod.Pki
    bins: Binaries

    def kubeconfig(self, who: str) -> Path:
        return self.dir / ("kubeconfig" if who == "admin" else f"{who}.kubeconfig")

    def _url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def etcd(self) -> list[str]:
        client, peer = self._url("etcd-client"), self._url("etcd-peer")
        return [
            str(self.bins["etcd"]),
            "--name=default",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def apiserver(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bins["kube-apiserver"]),
            f"--etcd-servers={self._url('etcd-client')}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki.crt(pkimod.SERVING)}",
            f"--tls-private-key-file={pki.key(pkimod.SERVING)}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--client-ca-file={pki.crt(pkimod.CA)}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.key(pkimod.SERVICE_ACCOUNT)}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # The only address is loopback, which Endpoints may not hold.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # For a real node (kubeloop.devcluster.node): how to reach its kubelet for
            # logs/exec (by InternalIP, not by a host name that may not resolve), and as
            # whom. kwok nodes have no kubelet and never see these.
            f"--kubelet-client-certificate={pki.crt('kubelet-client')}",
            f"--kubelet-client-key={pki.key('kubelet-client')}",
            "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
        ]

    def _component(self, binary: str, who: str, port: str) -> list[str]:
        """What the controller-manager and the scheduler share: kubeconfigs, loopback port."""
        kcfg = self.kubeconfig(who)
        return [
            str(self.bins[binary]),
            f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}",
            f"--authorization-kubeconfig={kcfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[port]}",
            "--authentication-skip-lookup=true",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def controller_manager(self) -> list[str]:
        pki = self.pki
        return [
            *self._component("kube-controller-manager", "controller-manager", "controller-manager"),
            # Each controller gets its own ServiceAccount; at the default 20 QPS their
            # start-up alone takes seconds.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.key(pkimod.SERVICE_ACCOUNT)}",
            f"--root-ca-file={pki.crt(pkimod.CA)}",
            f"--cluster-signing-cert-file={pki.crt(pkimod.CA)}",
            f"--cluster-signing-key-file={pki.key(pkimod.CA)}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-name={self.name}",
            # kwok's heartbeats come late on a loaded 2-core machine; with the default
            # 40 s grace the node controller marks nodes NotReady and their pods unready,
            # which kwok never undoes for Running pods.
            "--node-monitor-grace-period=10m",
        ]

    def scheduler(self) -> list[str]:
        return self._component("kube-scheduler", "scheduler", "scheduler")

    def kwok(self) -> list[str]:
        return [
            str(self.bins["kwok"]),
            f"--kubeconfig={self.kubeconfig('kwok')}",
            f"--config={self.dir / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            "--cidr=10.244.0.0/16",
            f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}={NODE_ANNOTATION_VALUE}",
        ]
