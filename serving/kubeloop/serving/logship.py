"""Prediction log files shipped to an object store (``prediction_log_upload``).

The writer rotates its local file at ``prediction_log_max_bytes``; with an upload prefix
each rotated file is renamed to a name of its own (``<file>.<time ns>.jsonl``) and put
at ``<prefix>/<pod>/<time ns>.jsonl`` by one thread, then removed here. A put that
fails is retried on the next round, so an unreachable store costs local disk, bounded
by ``keep`` files waiting (the oldest beyond that is deleted, and counted). On shutdown
the current file is rotated and shipped within the time left. Files left by an earlier
container (an emptyDir outlives a restart) are shipped first.

The store's credentials are the standard variables of its driver (``AWS_*`` for S3),
as for the artifact store; nothing here logs them.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable

import fsspec

log = logging.getLogger(__name__)

#: seconds between two rounds of the shipping thread
ROUND_S = 1.0


def pending_name(target: str, now_ns: int) -> str:
    """The name a rotated file waits under until it is shipped."""
    return f"{target}.{now_ns}.jsonl"


def count_lines(path: str) -> int:
    """Lines in a file, read in blocks (a dropped file's lines are counted)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def remote_name(prefix: str, pod: str, pending: str) -> str:
    """Where a waiting file goes: ``<prefix>/<pod>/<time ns>.jsonl``."""
    stamp = pending.rsplit(".", 2)[-2]
    return f"{prefix.rstrip('/')}/{pod}/{stamp}.jsonl"


class Shipper:
    """Puts rotated prediction log files into the object store, oldest first."""

    def __init__(
        self,
        target: str,
        prefix: str,
        pod: str,
        keep: int,
        on_dropped: Callable[[int], None] = lambda lines: None,
    ) -> None:
        self.target, self.prefix, self.pod, self.keep = target, prefix, pod, keep
        self._on_dropped = on_dropped
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-ship", daemon=True)
        self.problem: str | None = None

    def start(self) -> None:
        self._thread.start()

    def rotated(self, path: str) -> None:
        """The writer closed ``path`` (its full file): give it a name of its own, ship it."""
        os.replace(path, pending_name(self.target, time.time_ns()))
        self._prune()
        self._wake.set()

    def pending(self) -> list[str]:
        """Files waiting, oldest first."""
        return sorted(glob.glob(glob.escape(self.target) + ".*.jsonl"))

    def ship(self, deadline: float = float("inf")) -> int:
        """Put every waiting file (until ``deadline``, monotonic); how many are left."""
        self._prune()
        for path in self.pending():
            if time.monotonic() >= deadline:
                break
            if not os.path.exists(path):
                continue  # shipped meanwhile by the other caller (shutdown), or dropped
            try:
                fs, remote = fsspec.core.url_to_fs(remote_name(self.prefix, self.pod, path))
                if "file" in fs.protocol:  # a local folder (tests, a mounted share)
                    fs.makedirs(posixpath.dirname(remote), exist_ok=True)
                fs.put_file(path, remote)
            except Exception as exc:  # any driver error: retried on the next round
                self._failed(exc)
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.problem = None
        return len(self.pending())

    def _prune(self) -> None:
        """At most ``keep`` files wait: while the store is behind, the oldest go (counted)."""
        waiting = self.pending()
        for extra in waiting[: max(0, len(waiting) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):
                lines = count_lines(extra)
                os.unlink(extra)
                self._on_dropped(lines)

    def close(self, timeout: float) -> int:
        """Ship the last file (the writer has closed it) within ``timeout`` seconds; how
        many files are left behind."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if os.path.exists(self.target) and os.path.getsize(self.target) > 0:
            self.rotated(self.target)
        left = self.ship(time.monotonic() + max(0.0, timeout))
        if left:
            log.warning("prediction log: %d file(s) not shipped by shutdown", left)
        return left

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ship()
            self._wake.wait(ROUND_S)
            self._wake.clear()

    def _failed(self, exc: Exception) -> None:
        if self.problem is None:
            log.warning("prediction log upload to %s: %s; retrying", self.prefix, exc)
        self.problem = str(exc)
