"""The real node of a local cluster, as the CLI and the demo drive it.

The node is one per host (fixed address, bridge and state under
``$KUBELOOP_CACHE/realnode``); it records which cluster it joined, so
``kubeloop cluster down`` takes the node down first, while the API server still
answers and the kubelet can stop its pods properly. See :mod:`kubeloop.devcluster.node`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

from kubeloop.devcluster.errors import ClusterError
from kubeloop.devcluster.node import NodeConfig, RealNode, state_dir


def owner() -> str | None:
    """The cluster the real node serves, or None when no node is up."""
    try:
        return (state_dir() / "cluster").read_text().strip() or None
    except FileNotFoundError:
        return None


def node(cluster: str, log: Callable[[str], None]) -> RealNode:
    return RealNode(NodeConfig.from_env(cluster), log)


def up(cluster: str, log: Callable[[str], None]) -> None:
    """Join the real node to ``cluster``, unless it serves another one."""
    current = owner()
    if current not in (None, cluster):
        raise ClusterError(
            f"the real node serves cluster {current!r}; take it down first "
            f"(kubeloop cluster down --name {current})"
        )
    node(cluster, log).up()


def down_if_owned(cluster: str, log: Callable[[str], None]) -> bool:
    """Take the real node down if it serves ``cluster``. True if it did."""
    if owner() != cluster:
        return False
    node(cluster, log).down()
    return True


def load(
    cluster: str, files: list[Path], stream: IO[bytes] | None, log: Callable[[str], None]
) -> None:
    """Import image tarballs into the node of ``cluster``."""
    if owner() != cluster:
        raise ClusterError(f"no real node serves cluster {cluster!r}: kubeloop cluster up --real")
    node(cluster, log).load(files, stream)
