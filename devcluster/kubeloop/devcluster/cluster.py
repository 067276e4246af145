"""Start, inspect and stop a local control plane made of real Kubernetes processes.

A cluster named N lives in ``$KUBELOOP_CACHE/clusters/N/`` (default
``~/.cache/kubeloop``)::

    state.json        ports, and every started process: pid, start time, argv, log
    kubeconfig        admin (system:masters) kubeconfig, certificates embedded
    pki/              CA, serving and client certificates, ServiceAccount signing key
    etcd/             etcd's data
    logs/<name>.log   each process's output
    kwok.yaml         kwok's configuration and stages (see ``stages.py``)
    *.kubeconfig      per-component kubeconfigs

Each process runs in its own session (its own process group). ``down`` stops
exactly the recorded groups, after checking that each recorded pid still is
the process that was started (its start time), and removes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.binaries import Binaries
from kubeloop.devcluster.stages import NODE_ANNOTATION, NODE_ANNOTATION_VALUE, kwok_config

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "state.json"
NODE_PREFIX = "kwok-node-"


class ClusterError(RuntimeError):
    """The cluster could not be started, or is not there."""


def cache_dir() -> Path:
    """``$KUBELOOP_CACHE``, default ``~/.cache/kubeloop``."""
    return Path(os.environ.get("KUBELOOP_CACHE") or Path.home() / ".cache" / "kubeloop")


def clusters_dir() -> Path:
    return cache_dir() / "clusters"


# ------------------------------------------------------------------ processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of ``pid``, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to SIGTERM this child when its parent dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Process:
    """One started process, as recorded in ``state.json``."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[2] == self.start_ticks

    def group(self) -> list[int]:
        """Live members of this process's group, if the group is still the one started."""
        stat = _proc_stat(self.pid)
        if stat is not None and stat[2] != self.start_ticks:
            return []  # the pid now belongs to someone else: so may the group id
        return _group_members(self.pid)


@dataclass
class State:
    """What ``state.json`` records."""

    name: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    nodes: int = 0
    started_at: float = 0.0
    ready_seconds: float | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        raw = json.loads(path.read_text())
        raw["processes"] = [Process(**p) for p in raw.get("processes", [])]
        return cls(**raw)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


@dataclass(frozen=True)
class ClusterStatus:
    """What ``kubeloop cluster status`` reports."""

    name: str
    state_dir: str
    exists: bool
    running: bool
    server: str | None = None
    kubeconfig: str | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, bool] = field(default_factory=dict)
    ready_seconds: float | None = None


# ------------------------------------------------------------------ the API


class Api:
    """Minimal HTTPS client for the cluster's API server, authenticated as admin."""

    def __init__(self, port: int, pki: pkimod.Pki, who: str = "admin") -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(pki.ca_crt))
        self.context.load_cert_chain(str(pki.client_crt(who)), str(pki.client_key(who)))

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=timeout
        )
        try:
            headers = {"Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data.decode(errors="replace")

    def ok(self, path: str) -> bool:
        try:
            status, _ = self.request("GET", path, timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback TCP ports (held together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def kubeconfig_yaml(name: str, port: int, pki: pkimod.Pki, who: str) -> str:
    def b64(path: Path) -> str:
        return b64encode(path.read_bytes()).decode()

    context = f"kubeloop-{name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": f"https://127.0.0.1:{port}",
                    "certificate-authority-data": b64(pki.ca_crt),
                },
            }
        ],
        "users": [
            {
                "name": f"{context}-{who}",
                "user": {
                    "client-certificate-data": b64(pki.client_crt(who)),
                    "client-key-data": b64(pki.client_key(who)),
                },
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": f"{context}-{who}"}}
        ],
        "current-context": context,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def node_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                NODE_ANNOTATION: NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
            },
        },
    }


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    not_ready = any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints)
    return ready and not not_ready


# ------------------------------------------------------------------ the cluster


def prune_abandoned(prefix: str) -> list[str]:
    """Remove the state of clusters named ``prefix*`` whose processes are all gone
    (left by a killed test session, say). Returns the names removed."""
    removed = []
    if clusters_dir().is_dir():
        for entry in sorted(clusters_dir().iterdir()):
            ours = entry.is_dir() and entry.name.startswith(prefix) and NAME_RE.match(entry.name)
            if ours and DevCluster(entry.name).remove_if_abandoned():
                removed.append(entry.name)
    return removed


class DevCluster:
    """A named local cluster: ``up()``, ``status()``, ``down()``.

    ``bind_to_parent`` makes every started process receive SIGTERM when the
    starting process dies (for test sessions; the CLI leaves it off so the
    cluster outlives ``kubeloop cluster up``).
    """

    def __init__(
        self,
        name: str = "kubeloop",
        *,
        bind_to_parent: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not NAME_RE.match(name):
            raise ClusterError(f"invalid cluster name {name!r}: use a DNS label (a-z, 0-9, -)")
        self.name = name
        self.dir = clusters_dir() / name
        self.bind_to_parent = bind_to_parent
        self.log = log or (lambda _msg: None)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- paths

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def pki(self) -> pkimod.Pki:
        return pkimod.Pki(self.dir / "pki")

    def state(self) -> State | None:
        try:
            return State.load(self.state_path)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as err:
            raise ClusterError(
                f"{self.state_path} is unreadable ({err}); remove {self.dir}"
            ) from err

    def api(self, state: State | None = None) -> Api:
        state = state or self.state()
        if state is None or "apiserver" not in state.ports:
            raise ClusterError(f"cluster {self.name!r} is not running")
        return Api(state.ports["apiserver"], self.pki)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise ``up``/``down`` of this cluster name across processes."""
        locks = clusters_dir() / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / self.name).open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- public operations

    def up(self, nodes: int = 1, timeout: float = 120.0) -> Path:
        """Start the cluster (or reuse the running one) with at least ``nodes`` Ready nodes.

        Returns the admin kubeconfig path. Raises :class:`ClusterError` with the
        tail of the failing component's log when something does not come up
        within ``timeout`` seconds.
        """
        if nodes < 0:
            raise ClusterError("--nodes must be 0 or more")
        deadline = time.monotonic() + timeout
        with self._locked():
            state = self.state()
            if state is not None and self._healthy(state):
                self.log(f"cluster {self.name!r} is already running")
                self._ensure_nodes(state, nodes, deadline)
                return self.kubeconfig
            if state is not None or self.dir.exists():
                self.log(f"cluster {self.name!r}: cleaning up a stopped or broken cluster")
                self._stop(state)
                shutil.rmtree(self.dir, ignore_errors=True)
            self._start(nodes, deadline)
            return self.kubeconfig

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the recorded processes and remove the state. False if there was none."""
        with self._locked():
            state = self.state()
            if state is None and not self.dir.exists():
                return False
            self._stop(state, timeout)
            shutil.rmtree(self.dir, ignore_errors=True)
            return True

    def remove_if_abandoned(self) -> bool:
        """Remove the state dir if none of its recorded processes runs. True if removed."""
        with self._locked():  # an `up` in progress holds the lock until it is done
            try:
                state = self.state()
            except ClusterError:
                state = None
            else:
                if state is None and not self.dir.exists():
                    return False
            if state is not None and any(p.alive() or p.group() for p in state.processes):
                return False
            self._stop(state)
            shutil.rmtree(self.dir, ignore_errors=True)
            return True

    def status(self) -> ClusterStatus:
        state = self.state()
        if state is None:
            return ClusterStatus(self.name, str(self.dir), exists=self.dir.exists(), running=False)
        procs = [
            {"name": p.name, "pid": p.pid, "alive": p.alive(), "log": p.log}
            for p in state.processes
        ]
        running = self._healthy(state)
        nodes: dict[str, bool] = {}
        if running:
            with contextlib.suppress(OSError, http.client.HTTPException):
                code, body = self.api(state).request("GET", "/api/v1/nodes")
                if code == 200:
                    nodes = {n["metadata"]["name"]: _node_ready(n) for n in body["items"]}
        port = state.ports.get("apiserver")
        return ClusterStatus(
            name=self.name,
            state_dir=str(self.dir),
            exists=True,
            running=running,
            server=f"https://127.0.0.1:{port}" if port else None,
            kubeconfig=str(self.kubeconfig) if self.kubeconfig.exists() else None,
            processes=procs,
            nodes=nodes,
            ready_seconds=state.ready_seconds,
        )

    # -- internals

    def _healthy(self, state: State) -> bool:
        expected = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        alive = {p.name for p in state.processes if p.alive()}
        if not expected <= alive:
            return False
        try:
            return self.api(state).ok("/readyz")
        except OSError:  # certificates gone: not a cluster this code can use
            return False

    def _spawn(self, state: State, name: str, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as handle:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if self.bind_to_parent else None,
            )
        stat = _proc_stat(proc.pid)
        self._children[proc.pid] = proc
        state.processes.append(
            Process(name, proc.pid, stat[2] if stat else -1, argv, str(log_path))
        )
        state.save(self.state_path)

    def _start(self, nodes: int, deadline: float) -> None:
        t0 = time.monotonic()
        bins = Binaries.resolve()
        self.dir.mkdir(parents=True)
        pki = pkimod.generate(self.dir / "pki")
        names = ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        state = State(name=self.name, ports=ports, nodes=nodes, started_at=time.time())
        state.save(self.state_path)
        for who in ("admin", "controller-manager", "scheduler", "kwok"):
            path = self.kubeconfig if who == "admin" else self.dir / f"{who}.kubeconfig"
            path.write_text(kubeconfig_yaml(self.name, ports["apiserver"], pki, who))
            path.chmod(0o600)
        (self.dir / "kwok.yaml").write_text(kwok_config())
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        d = self.dir
        try:
            etcd_client = f"http://127.0.0.1:{ports['etcd-client']}"
            etcd_peer = f"http://127.0.0.1:{ports['etcd-peer']}"
            self._spawn(
                state,
                "etcd",
                [
                    str(bins["etcd"]),
                    "--name=default",
                    f"--data-dir={d / 'etcd'}",
                    f"--listen-client-urls={etcd_client}",
                    f"--advertise-client-urls={etcd_client}",
                    f"--listen-peer-urls={etcd_peer}",
                    f"--initial-advertise-peer-urls={etcd_peer}",
                    f"--initial-cluster=default={etcd_peer}",
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                env,
            )
            self._spawn(
                state,
                "kube-apiserver",
                [
                    str(bins["kube-apiserver"]),
                    f"--etcd-servers={etcd_client}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={ports['apiserver']}",
                    f"--tls-cert-file={pki.serving_crt}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--cert-dir={d / 'apiserver-certs'}",
                    f"--client-ca-file={pki.ca_crt}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer={SA_ISSUER}",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true",
                    # The only address is loopback, which Endpoints may not hold.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    # For a real node (hack/realnode.sh): how to reach its kubelet for
                    # logs/exec (by InternalIP, not by a host name that may not resolve),
                    # and as whom. kwok nodes have no kubelet and never see these.
                    f"--kubelet-client-certificate={pki.client_crt('kubelet-client')}",
                    f"--kubelet-client-key={pki.client_key('kubelet-client')}",
                    "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
                ],
                env,
            )
            api = Api(ports["apiserver"], pki)
            self._wait(state, lambda: api.ok("/readyz"), "kube-apiserver /readyz", deadline)
            self.log(f"kube-apiserver ready after {time.monotonic() - t0:.1f}s")

            def kcfg(who: str) -> str:
                return str(d / f"{who}.kubeconfig")

            self._spawn(
                state,
                "kube-controller-manager",
                [
                    str(bins["kube-controller-manager"]),
                    f"--kubeconfig={kcfg('controller-manager')}",
                    f"--authentication-kubeconfig={kcfg('controller-manager')}",
                    f"--authorization-kubeconfig={kcfg('controller-manager')}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports['controller-manager']}",
                    "--authentication-skip-lookup=true",
                    "--leader-elect=false",
                    # Each controller gets its own ServiceAccount; at the default
                    # 20 QPS their start-up alone takes seconds.
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_crt}",
                    f"--cluster-signing-cert-file={pki.ca_crt}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--cluster-name={self.name}",
                    "--profiling=false",
                    # kwok's heartbeats come late on a loaded 2-core machine; with the
                    # default 40 s grace the node controller marks nodes NotReady and
                    # their pods unready, which kwok never undoes for Running pods.
                    "--node-monitor-grace-period=10m",
                ],
                env,
            )
            self._spawn(
                state,
                "kube-scheduler",
                [
                    str(bins["kube-scheduler"]),
                    f"--kubeconfig={kcfg('scheduler')}",
                    f"--authentication-kubeconfig={kcfg('scheduler')}",
                    f"--authorization-kubeconfig={kcfg('scheduler')}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports['scheduler']}",
                    "--authentication-skip-lookup=true",
                    "--leader-elect=false",
                    "--profiling=false",
                ],
                env,
            )
            self._spawn(
                state,
                "kwok",
                [
                    str(bins["kwok"]),
                    f"--kubeconfig={kcfg('kwok')}",
                    f"--config={d / 'kwok.yaml'}",
                    "--manage-all-nodes=false",
                    "--cidr=10.244.0.0/16",
                    f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}={NODE_ANNOTATION_VALUE}",
                ],
                {**env, "HOME": str(d)},
            )
            self._ensure_nodes(state, nodes, deadline)
            self._wait(
                state,
                lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
                "the default ServiceAccount (kube-controller-manager at work)",
                deadline,
            )
        except BaseException:
            self._stop(state)
            raise
        state.ready_seconds = round(time.monotonic() - t0, 2)
        state.save(self.state_path)
        self.log(f"cluster {self.name!r} ready in {state.ready_seconds}s")

    def _ensure_nodes(self, state: State, count: int, deadline: float) -> None:
        api = self.api(state)
        wanted = [f"{NODE_PREFIX}{i}" for i in range(count)]
        for name in wanted:
            code, body = api.request("POST", "/api/v1/nodes", node_manifest(name))
            if code not in (201, 409):
                raise ClusterError(f"creating node {name}: HTTP {code}: {body}")
        if count > state.nodes:
            state.nodes = count
            state.save(self.state_path)

        def ready() -> bool:
            code, body = api.request("GET", "/api/v1/nodes")
            if code != 200:
                return False
            found = {n["metadata"]["name"]: _node_ready(n) for n in body["items"]}
            return all(found.get(n) for n in wanted)

        t0 = time.monotonic()
        self._wait(state, ready, f"{count} kwok nodes Ready and untainted", deadline)
        self.log(f"{count} node(s) Ready after {time.monotonic() - t0:.1f}s")

    def _wait(
        self, state: State, predicate: Callable[[], bool], what: str, deadline: float
    ) -> None:
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if predicate():
                    return
            dead = [p for p in state.processes if not p.alive()]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(p.name for p in dead)} exited" if dead else "timed out"
                tails = "".join(self._tail(p) for p in (dead or state.processes))
                raise ClusterError(f"cluster {self.name!r}: {why} while waiting for {what}{tails}")
            time.sleep(0.1)

    @staticmethod
    def _tail(proc: Process, lines: int = 15) -> str:
        try:
            text = Path(proc.log).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {proc.log} (last {lines} lines)\n" + "\n".join(text)

    def _stop(self, state: State | None, timeout: float = 30.0) -> None:
        """SIGTERM each recorded process group (newest first), SIGKILL what outlives timeout."""
        if state is None:
            return
        procs = list(reversed(state.processes))
        groups = {p.pid: p for p in procs if p.group()}
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while groups and time.monotonic() < deadline:
            self._reap()
            groups = {pgid: p for pgid, p in groups.items() if p.group()}
            if groups:
                time.sleep(0.05)
        for pgid, p in groups.items():
            self.log(f"{p.name} (pid {pgid}) ignored SIGTERM for {timeout}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while groups and time.monotonic() < kill_deadline:
            self._reap()
            groups = {pgid: p for pgid, p in groups.items() if p.group()}
            if groups:
                time.sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]
