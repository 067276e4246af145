"""Long-running local processes, each in its own session, recorded by pid and start time.

The control plane (``cluster.py``) and the real node (``node/``) start their daemons
through a :class:`Supervisor` and keep the returned :class:`Process` records in a state
file. A record names exactly one process: a pid is only trusted while its start time
in ``/proc`` is the recorded one, so stopping never hits a process that reused the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kubeloop.devcluster.errors import ClusterError


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of ``pid``, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to SIGTERM this child when its parent dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Process:
    """One started process, as a state file records it."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        stat = proc_stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[2] == self.start_ticks

    def group(self) -> list[int]:
        """Live members of this process's group, if the group is still the one started."""
        stat = proc_stat(self.pid)
        if stat is not None and stat[2] != self.start_ticks:
            return []  # the pid now belongs to someone else: so may the group id
        return group_members(self.pid)

    def tail(self, lines: int = 15) -> str:
        """The end of the process's log, headed by its path (for error messages)."""
        try:
            text = Path(self.log).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {self.log} (last {lines} lines)\n" + "\n".join(text)


class Supervisor:
    """Starts processes in their own sessions with logs under ``log_dir``; stops their groups.

    ``bind_to_parent`` makes every started process receive SIGTERM when the starting
    process dies (test sessions); without it the processes outlive their starter.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        bind_to_parent: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.bind_to_parent = bind_to_parent
        self.log = log or (lambda _msg: None)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> Process:
        """Start ``argv`` as ``name``, its output appended to ``log_dir/name.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as handle:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if self.bind_to_parent else None,
            )
        stat = proc_stat(proc.pid)
        self._children[proc.pid] = proc
        return Process(name, proc.pid, stat[2] if stat else -1, argv, str(log_path))

    def stop(
        self, processes: Iterable[Process], timeout: float = 30.0, *, hard: bool = False
    ) -> None:
        """SIGTERM each process's group (in the order given), SIGKILL what outlives ``timeout``.
        ``hard`` sends SIGKILL at once: a crash, nothing gets to shut down cleanly."""
        groups = {p.pid: p for p in processes if p.group()}
        if not hard:
            self._signal(groups, signal.SIGTERM)
            groups = self._await_exit(groups, timeout)
            for pgid, p in groups.items():
                self.log(f"{p.name} (pid {pgid}) ignored SIGTERM for {timeout}s: SIGKILL")
        self._signal(groups, signal.SIGKILL)
        self._await_exit(groups, 10)
        self._reap()

    @staticmethod
    def _signal(groups: dict[int, Process], sig: signal.Signals) -> None:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def _await_exit(self, groups: dict[int, Process], timeout: float) -> dict[int, Process]:
        """The groups that still have members after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while groups and time.monotonic() < deadline:
            self._reap()
            groups = {pgid: p for pgid, p in groups.items() if p.group()}
            if groups:
                time.sleep(0.05)
        return groups

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    deadline: float,
    watched: Callable[[], list[Process]],
    owner: str,
) -> None:
    """Poll ``predicate`` until it holds; fail as soon as a watched process exits or at
    ``deadline`` (monotonic), with the tails of the logs that explain it."""
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if predicate():
                return
        processes = watched()
        dead = [p for p in processes if not p.alive()]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(p.name for p in dead)} exited" if dead else "timed out"
            tails = "".join(p.tail() for p in (dead or processes))
            raise ClusterError(f"{owner}: {why} while waiting for {what}{tails}")
        time.sleep(0.1)
