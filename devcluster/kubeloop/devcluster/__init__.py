"""A local Kubernetes control plane for tests and development.

``kubeloop cluster up`` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes) as local processes on free loopback ports,
from the binaries that ``hack/toolchain.sh`` builds. See ``docs/cluster.md``.
"""

from kubeloop.devcluster.cluster import ClusterError, ClusterStatus, DevCluster, cache_dir

__all__ = ["ClusterError", "ClusterStatus", "DevCluster", "cache_dir"]
