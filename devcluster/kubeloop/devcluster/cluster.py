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
import fcntl
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.binaries import Binaries
from kubeloop.devcluster.controlplane import KUBECONFIG_USERS, PORT_NAMES, ControlPlane
from kubeloop.devcluster.errors import ClusterError
from kubeloop.devcluster.process import Process, Supervisor, wait_for
from kubeloop.devcluster.stages import NODE_ANNOTATION, NODE_ANNOTATION_VALUE, kwok_config
from kubeloop.progress import Progress

__all__ = [
    "Api",
    "ClusterError",
    "ClusterStatus",
    "DevCluster",
    "Process",
    "State",
    "cache_dir",
    "clusters_dir",
    "free_ports",
    "kubeconfig_yaml",
    "prune_abandoned",
]

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
STATE_FILE = "state.json"
NODE_PREFIX = "kwok-node-"
#: the control plane's processes, in start order
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def cache_dir() -> Path:
    """``$KUBELOOP_CACHE``, default ``~/.cache/kubeloop``."""
    return Path(os.environ.get("KUBELOOP_CACHE") or Path.home() / ".cache" / "kubeloop")


def clusters_dir() -> Path:
    return cache_dir() / "clusters"


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

    def replace(self, process: Process) -> None:
        """Put ``process`` in the place of the recorded one of its name (start order kept)."""
        names = [p.name for p in self.processes]
        if process.name not in names:
            raise ClusterError(f"no {process.name} process is recorded")
        self.processes[names.index(process.name)] = process

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
        self.context = ssl.create_default_context(cafile=str(pki.crt(pkimod.CA)))
        self.context.load_cert_chain(str(pki.crt(who)), str(pki.key(who)))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = 5.0,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=timeout
        )
        try:
            headers = {"Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = content_type
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

    def apply(self, obj: dict[str, Any], manager: str) -> None:
        """Server-side apply ``obj`` as field manager ``manager`` (taking over conflicts)."""
        query = urlencode({"fieldManager": manager, "force": "true"})
        code, body = self.request(
            "PATCH",
            f"{object_path(obj)}?{query}",
            obj,
            timeout=15.0,
            content_type="application/apply-patch+yaml",
        )
        if code not in (200, 201):
            what = f"{obj['kind']} {obj['metadata']['name']}"
            raise ClusterError(f"applying {what}: HTTP {code}: {body}")


def object_path(obj: dict[str, Any]) -> str:
    """The API path of ``obj`` (namespaced when its metadata names a namespace). The
    resource is the lower-case kind plus ``s``, which holds for the kinds applied here."""
    version = obj["apiVersion"]
    prefix = f"/apis/{version}" if "/" in version else f"/api/{version}"
    meta = obj["metadata"]
    if meta.get("namespace"):
        prefix += f"/namespaces/{quote(meta['namespace'])}"
    return f"{prefix}/{obj['kind'].lower()}s/{quote(meta['name'])}"


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


def kubeconfig_yaml(name: str, port: int, ca: Path, crt: Path, key: Path, user: str) -> str:
    """A kubeconfig for ``https://127.0.0.1:port`` with every certificate embedded."""

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
                    "certificate-authority-data": b64(ca),
                },
            }
        ],
        "users": [
            {
                "name": f"{context}-{user}",
                "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)},
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": f"{context}-{user}"}}
        ],
        "current-context": context,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (kubeconfigs hold keys)."""
    path.write_text(text)
    path.chmod(0o600)


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
        progress: Progress | None = None,
    ) -> None:
        if not NAME_RE.match(name):
            raise ClusterError(f"invalid cluster name {name!r}: use a DNS label (a-z, 0-9, -)")
        self.name = name
        self.dir = clusters_dir() / name
        self.log = log or (lambda _msg: None)
        #: hears of the stages of `up` (a live display of ``kubeloop cluster up``)
        self.progress = progress or Progress()
        self.supervisor = Supervisor(self.dir / "logs", bind_to_parent=bind_to_parent, log=self.log)

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

    @property
    def api_port(self) -> int | None:
        """The API server's loopback port, while the state records one."""
        state = self.state()
        return state.ports.get("apiserver") if state else None

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

    def restart(
        self, component: str, timeout: float = 60.0, *, hard: bool = False, down_for: float = 0.0
    ) -> None:
        """Stop one control-plane process and start it again with the same command line,
        leaving the others running: what a client must survive, e.g. an API server restart.

        ``hard`` kills it (SIGKILL, a crash) instead of asking it to stop (SIGTERM);
        ``down_for`` keeps it stopped that many seconds (an outage, not just a restart).
        Returns once kube-apiserver answers ``/readyz`` again; raises
        :class:`ClusterError` with the logs' tails when it does not within ``timeout``
        of the start.
        """
        if component not in COMPONENTS:
            raise ClusterError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
        with self._locked():
            state = self.state()
            old = next((p for p in state.processes if p.name == component), None) if state else None
            if state is None or old is None:
                raise ClusterError(f"cluster {self.name!r} has no {component} process recorded")
            self.supervisor.stop([old], timeout, hard=hard)
            time.sleep(down_for)
            deadline = time.monotonic() + timeout
            state.replace(
                self.supervisor.spawn(component, old.argv, cwd=self.dir, env=self._env(component))
            )
            state.save(self.state_path)
            api = self.api(state)
            what = f"kube-apiserver /readyz after restarting {component}"
            self._wait(state, lambda: api.ok("/readyz"), what, deadline)
            self.log(f"cluster {self.name!r}: {component} restarted")

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
        alive = {p.name for p in state.processes if p.alive()}
        if not set(COMPONENTS) <= alive:
            return False
        try:
            return self.api(state).ok("/readyz")
        except OSError:  # certificates gone: not a cluster this code can use
            return False

    def _env(self, component: str) -> dict[str, str]:
        """A component's environment: ours without KUBECONFIG (each is told its own);
        kwok keeps its files in the cluster's directory."""
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        return {**env, "HOME": str(self.dir)} if component == "kwok" else env

    def _spawn(self, state: State, name: str, argv: list[str]) -> None:
        process = self.supervisor.spawn(name, argv, cwd=self.dir, env=self._env(name))
        state.processes.append(process)
        state.save(self.state_path)

    def _prepare(self, nodes: int) -> tuple[State, ControlPlane]:
        """The state dir with certificates, kubeconfigs and kwok's stages; ports picked."""
        bins = Binaries.resolve()
        self.dir.mkdir(parents=True)
        pki = pkimod.generate(self.dir / "pki")
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        plane = ControlPlane(self.dir, self.name, ports, pki, bins)
        state = State(name=self.name, ports=ports, nodes=nodes, started_at=time.time())
        state.save(self.state_path)
        for who in KUBECONFIG_USERS:
            text = kubeconfig_yaml(
                self.name, ports["apiserver"], pki.crt(pkimod.CA), pki.crt(who), pki.key(who), who
            )
            write_private(plane.kubeconfig(who), text)
        (self.dir / "kwok.yaml").write_text(kwok_config())
        return state, plane

    def _start(self, nodes: int, deadline: float) -> None:
        t0 = time.monotonic()
        self.progress.stage("certificates and kubeconfigs")
        state, plane = self._prepare(nodes)
        try:
            self._launch(state, plane, deadline)
            self._ensure_nodes(state, nodes, deadline)
            api = self.api(state)
            self.progress.stage("the default ServiceAccount")
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

    def _launch(self, state: State, plane: ControlPlane, deadline: float) -> None:
        """etcd and the API server, then (once it is ready) the rest of the control plane."""
        t0 = time.monotonic()
        self.progress.stage("etcd and kube-apiserver")
        self._spawn(state, "etcd", plane.etcd())
        self._spawn(state, "kube-apiserver", plane.apiserver())
        api = self.api(state)
        self._wait(state, lambda: api.ok("/readyz"), "kube-apiserver /readyz", deadline)
        self.log(f"kube-apiserver ready after {time.monotonic() - t0:.1f}s")
        self.progress.stage("kube-controller-manager, kube-scheduler, kwok")
        self._spawn(state, "kube-controller-manager", plane.controller_manager())
        self._spawn(state, "kube-scheduler", plane.scheduler())
        self._spawn(state, "kwok", plane.kwok())

    def _ensure_nodes(self, state: State, count: int, deadline: float) -> None:
        api = self.api(state)
        self.progress.stage("nodes Ready", total=count, unit="nodes")
        shown = 0
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
            nonlocal shown
            now = sum(1 for n in wanted if found.get(n))
            self.progress.advance(now - shown)
            shown = now
            return now == len(wanted)

        t0 = time.monotonic()
        self._wait(state, ready, f"{count} kwok nodes Ready and untainted", deadline)
        self.log(f"{count} node(s) Ready after {time.monotonic() - t0:.1f}s")

    def _wait(
        self, state: State, predicate: Callable[[], bool], what: str, deadline: float
    ) -> None:
        wait_for(predicate, what, deadline, lambda: state.processes, f"cluster {self.name!r}")

    def _stop(self, state: State | None, timeout: float = 30.0) -> None:
        """Stop each recorded process group, newest first."""
        if state is not None:
            self.supervisor.stop(reversed(state.processes), timeout)
