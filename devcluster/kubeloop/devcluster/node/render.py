"""The node's configuration files and command lines, as pure functions of its config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubeloop.devcluster.node.config import (
    API_PROXY_PORT,
    BRIDGE,
    CNI_NETWORK,
    DNS_IP,
    PAUSE_IMAGE,
    NodeConfig,
)


def containerd_config(cfg: NodeConfig) -> str:
    """containerd 1.6 (Debian bookworm), config version 2: its own root, state and socket,
    so it never meets another containerd on the host."""
    return f"""\
# Written by kubeloop.devcluster.node. containerd 1.6 (Debian bookworm), config version 2.
version = 2
root = "{cfg.path("containerd", "root")}"
state = "{cfg.run / "containerd"}"
[grpc]
  address = "{cfg.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{cfg.path("containerd", "opt")}"
[plugins."io.containerd.grpc.v1.cri"]
  # Never pulled: imported from tarballs (kubeloop cluster load).
  sandbox_image = "{PAUSE_IMAGE}"
  # Pod network namespaces under our state dir, not /run/netns (easy to clean up).
  netns_mounts_under_state_dir = true
  # Root here lacks CAP_SYS_RESOURCE (a sandboxed VM): lowering oom_score_adj below our own
  # fails ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied" -> runc
  # "can't get final child's PID from pipe: EOF"). Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 without systemd as PID 1: the cgroupfs driver (kubelet: cgroupDriver cgroupfs).
        SystemdCgroup = false
        # runc's state beside ours (the default is /run/containerd/runc).
        Root = "{cfg.run / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cfg.path("cni", "net.d")}"
"""


def cni_conflist(cfg: NodeConfig) -> str:
    """bridge + host-local IPAM (its own data dir) + portmap (hostPort) + firewall;
    containerd adds the loopback plugin itself. ipMasq: pods reach beyond the host via
    SNAT. firewall: ACCEPTs each pod's traffic in FORWARD (CNI-FORWARD), which dockerd
    sets to DROP."""
    ipam = {
        "type": "host-local",
        "dataDir": str(cfg.path("cni", "ipam")),
        "ranges": [[{"subnet": cfg.pod_cidr, "gateway": cfg.pod_gateway}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    bridge = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": ipam,
    }
    doc = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            bridge,
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables"},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def kubelet_config(cfg: NodeConfig, client_ca: Path) -> str:
    """The KubeletConfiguration for a cgroup v1 host without systemd or a registry."""
    sock = f"unix://{cfg.socket}"
    doc: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroup v1 host (1.34 still allows it when asked; 1.35 refuses by default).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        "address": cfg.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(cfg.path("pki", "kubelet-serving.crt")),
        "tlsPrivateKeyFile": str(cfg.path("pki", "kubelet-serving.key")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        # Pods get a resolv.conf pointing at clusterDNS; the host's is only for dnsPolicy Default.
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "podLogsDir": str(cfg.path("pod-logs")),
        **_KUBELET_HOST_SETTINGS,
    }
    return yaml.safe_dump(doc, sort_keys=False)


#: What this kind of host (a sandboxed VM, a small shared disk, no registry) asks of the kubelet.
_KUBELET_HOST_SETTINGS: dict[str, Any] = {
    "failSwapOn": False,
    # No CAP_SYS_RESOURCE here: -999 (the default) cannot be set; 0 is what we have.
    "oomScoreAdj": 0,
    "protectKernelDefaults": False,
    "serializeImagePulls": False,
    # No registry: images are imported, never pulled; keep them (GC never runs at 100%).
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
    # Small/shared dev disks: evict only when really out of space (these replace the defaults).
    "evictionHard": {
        "memory.available": "100Mi",
        "nodefs.available": "1%",
        "nodefs.inodesFree": "1%",
        "imagefs.available": "1%",
    },
    "maxPods": 110,
    "rotateCertificates": False,
    "serverTLSBootstrap": False,
    "registerNode": True,
    "nodeStatusReportFrequency": "1m",
    # ConfigMap and Secret volumes are refreshed on each pod sync: 10s instead of 1m, so that
    # a canary's new weight (the routing ConfigMap) reaches the stable pods within seconds.
    "syncFrequency": "10s",
}


def kube_proxy_config(cfg: NodeConfig) -> str:
    """iptables mode; NodePorts on the node's address only; the host's conntrack left alone."""
    doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cfg.kubeconfig("kube-proxy"))},
        "hostnameOverride": cfg.name,
        "mode": "iptables",
        "clusterCIDR": cfg.pod_cidr,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # NodePorts only on the node's own address, not on every host interface.
        "nodePortAddresses": [f"{cfg.ip}/32"],
        "iptables": {"localhostNodePorts": False},
        # Leave the host's conntrack sysctls alone (0 = do not set).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "oomScoreAdj": 0,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def containerd_argv(cfg: NodeConfig) -> list[str]:
    return ["containerd", "--config", str(cfg.path("containerd", "config.toml"))]


def kubelet_argv(cfg: NodeConfig, kubelet: Path) -> list[str]:
    return [
        str(kubelet),
        f"--config={cfg.path('kubelet-config.yaml')}",
        f"--kubeconfig={cfg.kubeconfig('kubelet')}",
        f"--root-dir={cfg.path('kubelet')}",
        f"--cert-dir={cfg.path('kubelet', 'pki')}",
        f"--hostname-override={cfg.name}",
        f"--node-ip={cfg.ip}",
        "--v=1",
    ]


def kube_proxy_argv(cfg: NodeConfig, kube_proxy: Path) -> list[str]:
    return [str(kube_proxy), f"--config={cfg.path('kube-proxy-config.yaml')}", "--v=1"]


def relay_argv(cfg: NodeConfig, api_port: int) -> list[str]:
    """A TCP relay NODE_IP:6443 -> the API server's loopback port (TLS passes through)."""
    return [
        "socat",
        f"TCP-LISTEN:{API_PROXY_PORT},bind={cfg.ip},reuseaddr,fork",
        f"TCP:127.0.0.1:{api_port}",
    ]
