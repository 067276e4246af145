"""A real node for a local cluster: pods run as containers on this host.

containerd + runc + a CNI bridge, the kubelet and kube-proxy (from ``make toolchain``) as
local processes, CoreDNS as a Deployment; for cgroup v1 hosts without systemd and without
a container registry (images are imported from tarballs). ``kubeloop cluster up --real``
starts it, ``kubeloop cluster down`` stops it and cleans the host. Needs root.

- ``config``: names, addresses and paths (one node per host);
- ``render``, ``manifests``, ``certs``: its files, cluster objects and certificates;
- ``host``: what it changes on the host and how that is undone;
- ``images``, ``containerd``: its own images and the runtime's client;
- ``node``: :class:`RealNode`, which puts these together.
"""

from kubeloop.devcluster.node.config import NodeConfig, state_dir
from kubeloop.devcluster.node.node import RealNode

__all__ = ["NodeConfig", "RealNode", "state_dir"]
