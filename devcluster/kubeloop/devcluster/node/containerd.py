"""The node's containerd, through its ``ctr`` client, in the namespace the CRI plugin uses."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from kubeloop.devcluster.node.commands import output, run, succeeds

NAMESPACE = "k8s.io"


class Containerd:
    """``ctr --address SOCKET -n k8s.io``: images in, containers out."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "-n", NAMESPACE, *args]

    def answers(self) -> bool:
        return succeeds(["ctr", "--address", str(self.socket), "version"], timeout=10)

    def import_file(self, path: Path) -> None:
        """A docker-archive or OCI tarball."""
        run(self._ctr("images", "import", "--all-platforms", str(path)), timeout=600)

    def import_stream(self, stream: IO[bytes]) -> None:
        """A tarball read from ``stream`` (``docker save IMAGE...`` piped in)."""
        run(self._ctr("images", "import", "--all-platforms", "-"), stdin=stream, timeout=600)

    def import_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.import_file(path)

    def tasks(self) -> list[str]:
        return output(self._ctr("tasks", "ls", "-q")).split()

    def remove_all(self) -> None:
        """Kill every task, then delete the tasks and every container (best effort)."""
        for task in self.tasks():
            succeeds(self._ctr("tasks", "kill", "-s", "KILL", task))
        deadline = time.monotonic() + 5
        while self.tasks_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for task in self.tasks():
            succeeds(self._ctr("tasks", "delete", "-f", task))
        for container in output(self._ctr("containers", "ls", "-q")).split():
            succeeds(self._ctr("containers", "rm", container))

    def tasks_running(self) -> bool:
        """Whether any task is still RUNNING (``ctr tasks ls`` prints TASK PID STATUS)."""
        rows = output(self._ctr("tasks", "ls")).splitlines()[1:]
        return any(row.split()[-1:] == ["RUNNING"] for row in rows)
