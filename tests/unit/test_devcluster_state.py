"""The local cluster's state file: a restarted component keeps its place."""

from __future__ import annotations

import pytest

from kubeloop.devcluster.cluster import COMPONENTS, ClusterError, Process, State


def test_a_restarted_process_replaces_its_record_in_start_order() -> None:
    state = State(
        "c", processes=[Process(n, i, i, [n], f"{n}.log") for i, n in enumerate(COMPONENTS)]
    )
    state.replace(Process("kube-apiserver", 99, 7, ["kube-apiserver"], "kube-apiserver.log"))
    assert [p.name for p in state.processes] == list(COMPONENTS)
    assert [p.pid for p in state.processes] == [0, 99, 2, 3, 4]
    with pytest.raises(ClusterError, match="no coredns"):
        state.replace(Process("coredns", 5, 5, [], ""))
