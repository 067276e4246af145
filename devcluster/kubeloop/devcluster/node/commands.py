"""Running the host's tools (ctr, iptables, ip, go, apt-get) for the node."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from kubeloop.devcluster.errors import ClusterError


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: IO[bytes] | None = None,
    timeout: float = 120,
) -> str:
    """Run ``argv`` and return its output; fail with its error output when it fails."""
    try:
        done = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ClusterError(f"{' '.join(argv)}: {err}") from err
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        raise ClusterError(f"{' '.join(argv)} failed (exit {done.returncode}): {stderr}")
    return done.stdout.decode(errors="replace")


def succeeds(argv: list[str], timeout: float = 60) -> bool:
    """Run ``argv``, quietly; whether it exited 0 (for checks and best-effort clean-up)."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def output(argv: list[str], timeout: float = 60) -> str:
    """The output of ``argv``, or "" when it fails (a listing of what may not be there)."""
    try:
        return run(argv, timeout=timeout)
    except ClusterError:
        return ""
