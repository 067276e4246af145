"""What a real node is made of: its names, addresses and where its files live.

Everything the node writes goes under ``$KUBELOOP_CACHE/realnode`` (configs, certificates,
containerd's content, the kubelet's root, logs) or ``/run/kubeloop-realnode`` (sockets and
containerd's state: unix socket paths must stay short). The node is one per host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubeloop.devcluster.cluster import cache_dir

BRIDGE = "kl-br0"
CNI_NETWORK = "kubeloop-realnode"
#: NODE_IP:API_PROXY_PORT relays to the API server's loopback port (socat)
API_PROXY_PORT = 6443
#: the `kubernetes` Service (first address of the cluster's Service range)
SERVICE_IP = "10.96.0.1"
#: the kubelet's clusterDNS: CoreDNS behind the kube-dns Service
DNS_IP = "10.96.0.10"
#: comment on the iptables rules that refuse Service addresses kube-proxy has not programmed
SERVICE_GUARD = "kubeloop-realnode-unprogrammed-service"
#: field manager of the objects the node applies, and the managed-by of its EndpointSlice
MANAGER = "kubeloop-realnode"
PAUSE_IMAGE = "kubeloop.local/pause:3.10"
BUSYBOX_IMAGE = "kubeloop.local/busybox:1.35"


@dataclass(frozen=True)
class NodeConfig:
    """One real node joining cluster ``cluster``; paths derive from ``state``/``run``."""

    cluster: str
    name: str = "realnode"
    ip: str = "10.250.0.1"
    #: a /24: the gateway is its first address
    pod_cidr: str = "10.85.0.0/24"
    dns: bool = True
    coredns_version: str = "v1.14.7"
    cache: Path = Path()
    state: Path = Path()
    run: Path = Path("/run/kubeloop-realnode")

    @classmethod
    def from_env(cls, cluster: str, env: Mapping[str, str] = os.environ) -> NodeConfig:
        """REALNODE_NAME, REALNODE_IP, REALNODE_POD_CIDR, REALNODE_DNS=0 (no CoreDNS),
        COREDNS_VERSION and KUBELOOP_CACHE override the defaults."""
        cache = cache_dir()
        return cls(
            cluster=cluster,
            name=env.get("REALNODE_NAME", cls.name),
            ip=env.get("REALNODE_IP", cls.ip),
            pod_cidr=env.get("REALNODE_POD_CIDR", cls.pod_cidr),
            dns=env.get("REALNODE_DNS", "1") != "0",
            coredns_version=env.get("COREDNS_VERSION", cls.coredns_version),
            cache=cache,
            state=state_dir(),
        )

    @property
    def socket(self) -> Path:
        """containerd's API socket."""
        return self.run / "containerd.sock"

    @property
    def pod_gateway(self) -> str:
        return self.pod_cidr.rsplit(".", 1)[0] + ".1"

    @property
    def coredns_image(self) -> str:
        return f"kubeloop.local/coredns:{self.coredns_version.removeprefix('v')}"

    @property
    def cluster_dir(self) -> Path:
        """The state dir of the cluster the node joins (its CA, admin kubeconfig)."""
        return self.cache / "clusters" / self.cluster

    def path(self, *parts: str) -> Path:
        """A path under the node's state dir."""
        return self.state.joinpath(*parts)

    def kubeconfig(self, who: str) -> Path:
        return self.path(f"{who}.kubeconfig")


def state_dir() -> Path:
    """``$KUBELOOP_CACHE/realnode``."""
    return cache_dir() / "realnode"
