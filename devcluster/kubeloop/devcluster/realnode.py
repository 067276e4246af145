"""A real node for a local cluster: ``hack/realnode.sh`` (containerd, kubelet, kube-proxy).

The node is one per host (fixed address, bridge and state under
``$KUBELOOP_CACHE/realnode``); the script records which cluster it joined, so
``kubeloop cluster down`` takes the node down first, while the API server still
answers and the kubelet can stop its pods properly.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from kubeloop.devcluster.binaries import MissingBinaryError, repo_root
from kubeloop.devcluster.cluster import ClusterError, cache_dir


def script() -> Path:
    root = repo_root()
    if root is None:
        raise MissingBinaryError("hack/realnode.sh not found: run from a Kubeloop checkout")
    return root / "hack" / "realnode.sh"


def owner() -> str | None:
    """The cluster the real node serves, or None when no node is up."""
    try:
        return (cache_dir() / "realnode" / "cluster").read_text().strip() or None
    except FileNotFoundError:
        return None


def run(command: str, cluster: str, log: Callable[[str], None], timeout: float = 900) -> None:
    """``hack/realnode.sh COMMAND --cluster CLUSTER``; its progress goes to stderr as it runs."""
    log(f"hack/realnode.sh {command} --cluster {cluster}")
    try:
        done = subprocess.run(
            [str(script()), command, "--cluster", cluster], timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ClusterError(f"hack/realnode.sh {command} took over {timeout:.0f}s") from err
    if done.returncode != 0:
        raise ClusterError(f"hack/realnode.sh {command} failed (exit {done.returncode})")


def up(cluster: str, log: Callable[[str], None]) -> None:
    current = owner()
    if current not in (None, cluster):
        raise ClusterError(
            f"the real node serves cluster {current!r}; take it down first "
            f"(kubeloop cluster down --name {current})"
        )
    run("up", cluster, log)


def down_if_owned(cluster: str, log: Callable[[str], None]) -> bool:
    """Take the real node down if it serves ``cluster``. True if it did."""
    if owner() != cluster:
        return False
    run("down", cluster, log, timeout=180)
    return True
