"""`kubeloop cluster up` at a terminal shows its stages; in a pipe its log lines stay as
they were and carry no escape sequences."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from kubeloop.devcluster.cluster import clusters_dir
from terminal import ANSI, on_terminal

pytestmark = pytest.mark.cluster

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
STAGES = (
    "certificates and kubeconfigs",
    "etcd and kube-apiserver",
    "kube-controller-manager, kube-scheduler, kwok",
    "nodes Ready",
    "2/2 nodes",
    "the default ServiceAccount",
)


def test_cluster_up_shows_its_stages_on_a_terminal_only():
    name = f"pytest-progress-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBELOOP_PROGRESS")}
    up = [KUBELOOP, "cluster", "up", "--name", name, "--nodes", "2"]
    try:
        seen = on_terminal(up, env, timeout=240)
        assert seen.code == 0, seen.text
        assert seen.stdout == f"{clusters_dir() / name / 'kubeconfig'}\n"
        assert ANSI.search(seen.screen)
        for stage in STAGES:
            assert stage in seen.text, seen.text
        assert "kube-apiserver ready after" in seen.text  # the log lines print above it
        again = subprocess.run(
            up, capture_output=True, text=True, env=env, timeout=240, check=False
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout == seen.stdout
        assert f"[cluster] cluster {name!r} is already running" in again.stderr
        assert not ANSI.search(again.stderr + again.stdout)
        assert "nodes Ready" not in again.stderr
    finally:
        down = subprocess.run(
            [KUBELOOP, "cluster", "down", "--name", name],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stderr
