"""kubeloop.devcluster without starting a cluster: binaries, kwok stages, state handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubeloop.devcluster import ClusterError, DevCluster
from kubeloop.devcluster.binaries import Binaries, MissingBinaryError, external
from kubeloop.devcluster.cluster import Process, State, clusters_dir, prune_abandoned
from kubeloop.devcluster.stages import COMPLETE_LABEL, kwok_config


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty KUBELOOP_CACHE, and no binaries supplied from outside."""
    monkeypatch.setenv("KUBELOOP_CACHE", str(tmp_path / "cache"))
    for var in ("KUBEBUILDER_ASSETS", "TEST_ASSET_ETCD", "TEST_ASSET_KWOK"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_test_asset_wins_over_kubebuilder_assets(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    executable(assets / "etcd")
    executable(assets / "kube-apiserver")
    own = executable(tmp_path / "mine" / "kube-apiserver")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("TEST_ASSET_KUBE_APISERVER", str(own))
    assert external("kube-apiserver") == own
    assert external("etcd") == assets / "etcd"
    monkeypatch.setenv("TEST_ASSET_ETCD", str(tmp_path / "not-there"))
    assert external("etcd") == assets / "etcd"  # falls back, as envtest does


def test_missing_binaries_name_the_fix(cache):
    with pytest.raises(MissingBinaryError, match=r"make toolchain"):
        Binaries.resolve(("etcd", "kwok"))


def test_binaries_come_from_the_toolchain_cache(cache):
    out = subprocess.run(
        ["hack/toolchain.sh", "--print-dir", "etcd"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    etcd = executable(Path(out.stdout.strip()) / "etcd")
    assert str(etcd).startswith(str(cache))
    assert Binaries.resolve(("etcd",))["etcd"] == etcd


def test_kwok_stages():
    stages = {d["metadata"]["name"]: d["spec"] for d in yaml.safe_load_all(kwok_config())}
    assert set(stages) == {
        "node-initialize",
        "node-heartbeat-with-lease",
        "pod-ready",
        "pod-complete",
        "pod-delete",
    }
    phase = {
        e["key"]: e["values"]
        for e in stages["pod-ready"]["selector"]["matchExpressions"]
        if e["key"] == ".status.phase"
    }
    assert phase == {".status.phase": ["Pending"]}  # never over Succeeded/Failed
    assert stages["pod-complete"]["selector"]["matchLabels"] == {COMPLETE_LABEL: "true"}


def test_cluster_names_are_dns_labels(cache):
    for bad in ("", "Upper", "a/b", "-x", "x" * 64):
        with pytest.raises(ClusterError):
            DevCluster(bad)


def test_abandoned_state_is_pruned_and_live_state_kept(cache):
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = DevCluster("pytest-dead")
    dead.dir.mkdir(parents=True)
    State("pytest-dead", processes=[Process("etcd", gone.pid, 1, [], "")]).save(dead.state_path)

    live = DevCluster("pytest-live")
    live.dir.mkdir(parents=True)
    ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    me = Process("python", os.getpid(), ticks, [], "")
    State("pytest-live", processes=[me]).save(live.state_path)
    other = DevCluster("other-dead")
    other.dir.mkdir(parents=True)

    assert prune_abandoned("pytest-") == ["pytest-dead"]
    assert sorted(p.name for p in clusters_dir().iterdir() if not p.name.startswith(".")) == [
        "other-dead",
        "pytest-live",
    ]
    assert live.status().exists
    assert not live.status().running  # the API server is not among its processes


def test_down_without_a_cluster_says_so(cache):
    assert DevCluster("nothing").down() is False
    assert DevCluster("nothing").status().exists is False
