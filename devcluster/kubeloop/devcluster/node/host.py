"""What the real node changes on the host, and how ``down`` undoes it.

``setup`` adds the node's address to ``lo``, turns on forwarding (and bridged traffic
through iptables) and refuses Service addresses kube-proxy has not programmed yet.
``clean`` removes what the node's processes leave behind once they are stopped: shims,
mounts, iptables chains and rules (kube-proxy's, the kubelet's, CNI's, ours), the bridge
and the address, pod cgroups, log links and run-time state. ``net.ipv4.ip_forward``
stays 1. The pure functions here decide; :class:`Host` acts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from kubeloop.devcluster.controlplane import SERVICE_CIDR
from kubeloop.devcluster.errors import ClusterError
from kubeloop.devcluster.node.commands import output, run, succeeds
from kubeloop.devcluster.node.config import BRIDGE, CNI_NETWORK, SERVICE_GUARD, NodeConfig

#: Debian package -> (how to tell it is there: "command", "file" or "package", what)
PACKAGES: dict[str, tuple[str, str]] = {
    "containerd": ("command", "containerd"),
    "runc": ("command", "runc"),
    "containernetworking-plugins": ("file", "/usr/lib/cni/bridge"),
    "iptables": ("command", "iptables"),
    "conntrack": ("command", "conntrack"),
    "socat": ("command", "socat"),
    # The static build (the busybox image has no libc); it replaces Debian's dynamic one.
    "busybox-static": ("package", "busybox-static"),
}
#: the chains the kubelet makes and kube-proxy --cleanup leaves: canaries, the
#: KUBE-FIREWALL localnet guard, the KUBE-IPTABLES-HINT marker
KUBELET_CHAIN_CLEANUP = (
    *(("-t", table, "-X", "KUBE-KUBELET-CANARY") for table in ("mangle", "nat", "filter")),
    ("-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"),
    ("-t", "filter", "-D", "OUTPUT", "-j", "KUBE-FIREWALL"),
    ("-t", "filter", "-F", "KUBE-FIREWALL"),
    ("-t", "filter", "-X", "KUBE-FIREWALL"),
    ("-t", "mangle", "-X", "KUBE-IPTABLES-HINT"),
)
#: the CNI firewall plugin's chains (CNI-FORWARD holds per-pod rules; CNI-ADMIN is for users)
#: the chain of CNI's firewall plugin for an administrator's rules, run before its ACCEPTs
ADMIN_CHAIN = "CNI-ADMIN"
FIREWALL_CLEANUP = (
    ("-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules",
     "-j", "CNI-FORWARD"),
    ("-t", "filter", "-F", "CNI-FORWARD"),
    ("-t", "filter", "-X", "CNI-FORWARD"),
    ("-t", "filter", "-F", "CNI-ADMIN"),
    ("-t", "filter", "-X", "CNI-ADMIN"),
)  # fmt: skip


def present(kind: str, what: str) -> bool:
    if kind == "command":
        return shutil.which(what) is not None
    if kind == "file":
        return os.access(what, os.X_OK)
    return succeeds(["dpkg", "-s", what])


def missing_packages(check: Callable[[str, str], bool] = present) -> list[str]:
    return [package for package, (kind, what) in PACKAGES.items() if not check(kind, what)]


def guard_rule() -> list[str]:
    """The match and target (no chain) of the rule refusing unprogrammed Service addresses:
    a Service created a moment ago must not leave the machine through the default route.
    Programmed ones are rewritten to a pod address (DNAT) before the filter chains."""
    return ["-d", SERVICE_CIDR, "-m", "comment", "--comment", SERVICE_GUARD, "-j", "REJECT"]


def _ours(words: list[str], network: str) -> bool:
    """Whether a rule carries CNI's comment for our network (``name: "NET" id: "..."``)."""
    return any(f'name: "{network}"' in word for word in words)


def cni_rule_deletions(rules: str, network: str = CNI_NETWORK) -> list[list[str]]:
    """``iptables -t nat`` arguments deleting the rules of ``iptables -t nat -S CHAIN``
    output that CNI added for ``network`` (the bridge plugin's masquerade rules)."""
    deletions = []
    for line in rules.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and _ours(words, network):
            deletions.append(["-D", *words[1:]])
    return deletions


def cni_chains(rules: str) -> list[str]:
    """The CNI-* chains that ``iptables -t nat -S`` output defines."""
    return [w[1] for w in map(str.split, rules.splitlines()) if w[:1] == ["-N"] and w[1:2] and
            w[1].startswith("CNI-")]  # fmt: skip


def mounts_under(mounts: str, roots: Iterable[Path]) -> list[str]:
    """Mount points from ``/proc/mounts`` text at or below ``roots``, deepest first."""
    prefixes = [str(r) for r in roots]
    points = [line.split()[1] for line in mounts.splitlines() if len(line.split()) > 1]
    ours = [p for p in points if any(p == r or p.startswith(r + "/") for r in prefixes)]
    return sorted(set(ours), reverse=True)


def is_shim_of(cmdline: list[str], socket: Path) -> bool:
    """Whether a command line is a containerd runc shim serving ``socket``."""
    pairs = itertools.pairwise(cmdline)
    return (
        bool(cmdline)
        and cmdline[0].endswith("containerd-shim-runc-v2")
        and (("-address", str(socket)) in pairs)
    )


class Host:
    """The host side of node ``cfg``: packages, network set-up, clean-up after ``down``."""

    def __init__(self, cfg: NodeConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log

    def install_packages(self) -> None:
        """Root, and the Debian packages the node runs (apt-get installs what is missing)."""
        if os.geteuid() != 0:
            raise ClusterError("a real node needs root (containers, mounts, iptables)")
        missing = missing_packages()
        if missing:
            self.log(f"installing {' '.join(missing)} (Debian)")
            run(["apt-get", "update", "-qq"], timeout=600)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "install", "-y", "-qq", *missing], env=env, timeout=1200)

    def setup(self) -> None:
        """The node's address on ``lo``, forwarding, and the Service guard rules.

        The address is a host address that is not loopback (Endpoints may not hold
        127.0.0.0/8) and that pods reach through their default route; dummy interfaces
        are not available on every kernel.
        """
        if f" {self.cfg.ip}/" not in run(["ip", "-4", "addr", "show", "dev", "lo"]):
            run(["ip", "addr", "add", f"{self.cfg.ip}/32", "dev", "lo"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        # Bridged pod traffic must pass iptables for Service DNAT (br_netfilter).
        bridged = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if bridged.exists():
            bridged.write_text("1\n")
        else:
            self.log("warning: no br_netfilter: pod -> Service -> same-node pod may fail")
        # CNI's firewall plugin puts its jump to CNI-FORWARD (which ACCEPTs every pod's
        # traffic) first in FORWARD when the first pod starts, above a guard inserted now;
        # CNI-ADMIN, which CNI-FORWARD jumps to before those ACCEPTs, keeps it first for
        # pods (else a pod's request to a Service created a moment ago leaves the machine)
        succeeds(["iptables", "-N", ADMIN_CHAIN])
        for chain in ("FORWARD", "OUTPUT", ADMIN_CHAIN):
            if not succeeds(["iptables", "-C", chain, *guard_rule()]):
                run(["iptables", "-I", chain, "1", *guard_rule()])

    def clean(self, kube_proxy: Path | None) -> None:
        """Undo :meth:`setup` and what the stopped processes left (best effort)."""
        self.kill_shims()
        self.unmount()
        self.clean_iptables(kube_proxy)
        succeeds(["ip", "link", "del", BRIDGE])
        succeeds(["ip", "addr", "del", f"{self.cfg.ip}/32", "dev", "lo"])
        self.remove_pod_cgroups()
        self.remove_files()

    def kill_shims(self) -> None:
        """Shims outlive containerd: SIGKILL those serving the node's socket."""
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                cmdline = (entry / "cmdline").read_bytes().decode().split("\0")
                if entry.name.isdigit() and is_shim_of(cmdline, self.cfg.socket):
                    os.kill(int(entry.name), signal.SIGKILL)

    def unmount(self) -> None:
        """Kubelet volumes, container root filesystems, network namespaces: deepest first."""
        roots = (self.cfg.state, self.cfg.run)
        for point in mounts_under(Path("/proc/mounts").read_text(), roots):
            succeeds(["umount", "-l", point])

    def clean_iptables(self, kube_proxy: Path | None) -> None:
        """kube-proxy's rules, then CNI's, the kubelet's chains and the Service guard."""
        if kube_proxy is not None:
            succeeds([str(kube_proxy), "--cleanup"])
        nat = ["iptables", "-t", "nat"]
        for deletion in cni_rule_deletions(output([*nat, "-S", "POSTROUTING"])):
            succeeds([*nat, *deletion])
        for chain in cni_chains(output([*nat, "-S"])):
            if _ours(shlex.split(output([*nat, "-S", chain])), CNI_NETWORK):
                succeeds([*nat, "-F", chain])
                succeeds([*nat, "-X", chain])
        for ipt in ("iptables", "ip6tables"):
            for args in KUBELET_CHAIN_CLEANUP:
                succeeds([ipt, *args])
        for args in FIREWALL_CLEANUP:
            succeeds(["iptables", *args])
        for chain in ("FORWARD", "OUTPUT"):
            succeeds(["iptables", "-D", chain, *guard_rule()])

    def remove_pod_cgroups(self) -> None:
        """Empty pod cgroups (the kubelet's cgroupfs layout: /kubepods/... per hierarchy)."""
        for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
            for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def remove_files(self) -> None:
        """Log links into the node's dirs, run-time state; images and containerd's content
        stay (the next ``up`` reuses them)."""
        logs = Path("/var/log/containers")
        for link in logs.glob("*") if logs.is_dir() else ():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(link.readlink()).startswith(f"{self.cfg.state}/"):
                    link.unlink()
        shutil.rmtree(self.cfg.run, ignore_errors=True)
        for part in (("cni", "ipam"), ("kubelet",), ("pod-logs",)):
            shutil.rmtree(self.cfg.path(*part), ignore_errors=True)
        # containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state dir:
        # remove those directories when empty (another containerd may use them).
        for leftover in ("/run/containerd/s", "/run/containerd/fifo", "/run/containerd"):
            with contextlib.suppress(OSError):
                os.rmdir(leftover)
