"""kubeloop.devcluster without starting a cluster: binaries, kwok stages, state handling,
and what the real node renders and decides (its files, objects, certificates, images and
host clean-up), without root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kubeloop.devcluster import ClusterError, DevCluster
from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.binaries import Binaries, MissingBinaryError, external
from kubeloop.devcluster.cluster import State, clusters_dir, object_path, prune_abandoned
from kubeloop.devcluster.node import NodeConfig, host, images, manifests, render
from kubeloop.devcluster.node.certs import NodeCredentials
from kubeloop.devcluster.node.node import write_if_changed
from kubeloop.devcluster.process import Process
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


# ------------------------------------------------------------------ the real node's pure parts


@pytest.fixture
def node_cfg(cache: Path) -> NodeConfig:
    return NodeConfig.from_env("demo", env={})


def test_node_config_defaults_and_overrides(node_cfg, cache):
    assert (node_cfg.name, node_cfg.ip, node_cfg.pod_cidr) == (
        "realnode",
        "10.250.0.1",
        "10.85.0.0/24",
    )
    assert node_cfg.dns
    assert node_cfg.state == cache / "realnode"
    assert node_cfg.cluster_dir == cache / "clusters" / "demo"
    assert node_cfg.pod_gateway == "10.85.0.1"
    assert node_cfg.coredns_image == "kubeloop.local/coredns:1.14.7"
    env = {"REALNODE_NAME": "n1", "REALNODE_IP": "10.251.0.1", "REALNODE_POD_CIDR": "10.86.0.0/24",
           "REALNODE_DNS": "0", "COREDNS_VERSION": "v1.12.0"}  # fmt: skip
    other = NodeConfig.from_env("demo", env=env)
    assert (other.name, other.ip, other.pod_gateway, other.dns) == (
        "n1",
        "10.251.0.1",
        "10.86.0.1",
        False,
    )
    assert other.coredns_image == "kubeloop.local/coredns:1.12.0"


def test_containerd_and_cni_configs_keep_to_the_node_dirs(node_cfg):
    containerd = tomllib.loads(render.containerd_config(node_cfg))
    assert containerd["root"] == str(node_cfg.state / "containerd" / "root")
    assert containerd["state"] == "/run/kubeloop-realnode/containerd"
    assert containerd["grpc"]["address"] == "/run/kubeloop-realnode/containerd.sock"
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "kubeloop.local/pause:3.10"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"]["conf_dir"] == str(node_cfg.state / "cni" / "net.d")
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"SystemdCgroup": False, "Root": "/run/kubeloop-realnode/runc"}
    cni = json.loads(render.cni_conflist(node_cfg))
    assert cni["name"] == "kubeloop-realnode"
    bridge, portmap, firewall = cni["plugins"]
    assert bridge["bridge"] == "kl-br0"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.85.0.0/24", "gateway": "10.85.0.1"}]]
    assert bridge["ipam"]["dataDir"] == str(node_cfg.state / "cni" / "ipam")
    assert (portmap["type"], firewall["type"]) == ("portmap", "firewall")


def test_kubelet_and_kube_proxy_configs(node_cfg, tmp_path):
    kubelet = yaml.safe_load(render.kubelet_config(node_cfg, tmp_path / "ca.crt"))
    assert kubelet["failCgroupV1"] is False
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["address"] == "10.250.0.1"
    assert kubelet["clusterDNS"] == ["10.96.0.10"]
    assert kubelet["containerRuntimeEndpoint"] == "unix:///run/kubeloop-realnode/containerd.sock"
    assert kubelet["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")
    assert kubelet["syncFrequency"] == "10s"
    assert kubelet["imageGCHighThresholdPercent"] == 100
    proxy = yaml.safe_load(render.kube_proxy_config(node_cfg))
    assert proxy["mode"] == "iptables"
    assert proxy["nodePortAddresses"] == ["10.250.0.1/32"]
    assert proxy["clientConnection"]["kubeconfig"] == str(node_cfg.state / "kube-proxy.kubeconfig")
    relay = render.relay_argv(node_cfg, 40123)
    assert relay == [
        "socat",
        "TCP-LISTEN:6443,bind=10.250.0.1,reuseaddr,fork",
        "TCP:127.0.0.1:40123",
    ]


def test_node_objects_point_the_kubernetes_service_at_the_relay(node_cfg):
    binding, endpoints = manifests.node_objects(node_cfg)
    assert binding["roleRef"]["name"] == "system:node"
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    ]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
    assert endpoints["endpoints"][0]["addresses"] == ["10.250.0.1"]
    assert endpoints["ports"][0]["port"] == 6443
    paths = [object_path(o) for o in manifests.coredns_objects(node_cfg)]
    assert paths == [
        "/api/v1/namespaces/kube-system/serviceaccounts/coredns",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/kubeloop-realnode-coredns",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeloop-realnode-coredns",
        "/api/v1/namespaces/kube-system/configmaps/coredns",
        "/apis/apps/v1/namespaces/kube-system/deployments/coredns",
        "/api/v1/namespaces/kube-system/services/kube-dns",
    ]
    service = manifests.coredns_service()
    assert service["spec"]["clusterIP"] == "10.96.0.10"


def test_deployment_available_as_rollout_status_judges_it():
    def deployment(generation: int, **status: int) -> dict:
        return {"metadata": {"generation": generation}, "spec": {"replicas": 1}, "status": status}

    done = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    assert manifests.deployment_available(deployment(2, **done))
    assert not manifests.deployment_available(deployment(3, **done))
    assert not manifests.deployment_available(deployment(2, **{**done, "availableReplicas": 0}))
    assert not manifests.deployment_available(deployment(2, **{**done, "replicas": 2}))


def test_docker_archive_is_reproducible(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_text("#!/bin/sh\n")
    (rootfs / "bin" / "alias").symlink_to("tool")
    images.docker_archive("example.local/tool:1", rootfs, tmp_path / "a.tar", ["/bin/tool"])
    (rootfs / "bin" / "tool").touch()  # a new mtime changes nothing
    images.docker_archive("example.local/tool:1", rootfs, tmp_path / "b.tar", ["/bin/tool"])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as archive:
        (manifest,) = json.load(archive.extractfile("manifest.json"))
        assert manifest["RepoTags"] == ["example.local/tool:1"]
        layer = archive.extractfile(manifest["Layers"][0]).read()
        config = json.load(archive.extractfile(manifest["Config"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as files:
        members = {m.name: m for m in files.getmembers()}
    assert sorted(members) == ["bin", "bin/alias", "bin/tool"]
    assert members["bin/alias"].issym()
    assert members["bin/alias"].linkname == "tool"
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 0)}


#: ``iptables -t nat -S`` as it prints CNI's comments (quotes escaped)
NAT_RULES = "\n".join(
    (
        "-P POSTROUTING ACCEPT",
        "-N CNI-0a1b2c",
        "-N CNI-HOSTPORT-MASQ",
        "-N KUBE-POSTROUTING",
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        r'-A POSTROUTING -s 10.85.0.7/32 -m comment --comment "name: \"kubeloop-realnode\"'
        r' id: \"abc\"" -j CNI-0a1b2c',
        r'-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"podman\" id: \"def\""'
        " -j CNI-9f",
    )
)


def test_host_clean_up_finds_only_the_node_rules():
    assert host.cni_rule_deletions(NAT_RULES) == [
        ["-D", "POSTROUTING", "-s", "10.85.0.7/32", "-m", "comment", "--comment",
         'name: "kubeloop-realnode" id: "abc"', "-j", "CNI-0a1b2c"],
    ]  # fmt: skip
    assert host.cni_chains(NAT_RULES) == ["CNI-0a1b2c", "CNI-HOSTPORT-MASQ"]
    assert host.guard_rule()[:2] == ["-d", "10.96.0.0/16"]


def test_host_clean_up_unmounts_below_the_node_dirs_deepest_first(tmp_path):
    state, run = tmp_path / "realnode", Path("/run/kubeloop-realnode")
    mounts = "\n".join(
        f"overlay {point} overlay rw 0 0"
        for point in (
            f"{state}/kubelet/pods/x/volumes/a",
            "/run/kubeloop-realnode/containerd/io.containerd.runtime.v2.task/k8s.io/c1/rootfs",
            f"{state}2/elsewhere",
            f"{state}/kubelet",
            "/var/lib/docker/overlay2/x/merged",
        )
    )
    # reverse name order: a mount point always before the one it is under
    assert host.mounts_under(mounts, (state, run)) == [
        f"{state}/kubelet/pods/x/volumes/a",
        f"{state}/kubelet",
        "/run/kubeloop-realnode/containerd/io.containerd.runtime.v2.task/k8s.io/c1/rootfs",
    ]


def test_host_recognises_the_node_shims_and_missing_packages():
    sock = Path("/run/kubeloop-realnode/containerd.sock")
    shim = [
        "/usr/bin/containerd-shim-runc-v2",
        "-namespace",
        "k8s.io",
        "-id",
        "c1",
        "-address",
        str(sock),
    ]
    assert host.is_shim_of(shim, sock)
    assert not host.is_shim_of([*shim[:-1], "/run/containerd/containerd.sock"], sock)
    assert not host.is_shim_of(["/usr/bin/containerd", "-address", str(sock)], sock)
    assert host.missing_packages(lambda kind, what: kind != "package") == ["busybox-static"]
    assert host.missing_packages(lambda kind, what: True) == []


def test_node_credentials_follow_the_cluster_ca(node_cfg):
    cluster_pki = pkimod.generate(node_cfg.cluster_dir / "pki")
    credentials = NodeCredentials(node_cfg, cluster_pki)
    assert not credentials.current(40123)
    credentials.issue(40123)
    assert credentials.current(40123)
    assert not credentials.current(40124)  # a cluster restarted on another port
    kubelet = x509.load_pem_x509_certificate(credentials.pki.crt("kubelet").read_bytes())
    assert kubelet.subject.rfc4514_string() == "CN=system:node:realnode,O=system:nodes"
    serving = credentials.pki.crt("kubelet-serving")
    assert pkimod.alt_names(serving) == ["realnode", "10.250.0.1", "127.0.0.1"]
    kubeconfig = yaml.safe_load(node_cfg.kubeconfig("kubelet").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:40123"
    assert oct(node_cfg.kubeconfig("kubelet").stat().st_mode & 0o777) == "0o600"
    pkimod.generate(node_cfg.cluster_dir / "pki")  # `cluster up` after a `down`: a new CA
    assert not credentials.current(40123)


def test_cluster_serving_certificate_is_valid_for_pods_on_a_real_node(tmp_path):
    pki = pkimod.generate(tmp_path / "pki")
    names = pkimod.alt_names(pki.crt(pkimod.SERVING))
    assert "10.96.0.1" in names
    assert "kubernetes.default.svc" in names
    ca = pkimod.Authority.load(pki)
    assert all(ca.signed(pki.crt(who)) for who in (pkimod.SERVING, *pkimod.CLIENTS))
    assert not ca.signed(tmp_path / "missing.crt")


def test_write_if_changed_leaves_an_equal_file_alone(tmp_path):
    path = tmp_path / "kube-proxy-config.yaml"
    write_if_changed(path, "a: 1\n")
    before = path.stat()
    write_if_changed(path, "a: 1\n")
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    write_if_changed(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
