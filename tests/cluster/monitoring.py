"""Prometheus and Alertmanager (Debian's packages) as local processes on loopback.

Configs are generated per test with ``kubeloop.devcluster.monitoring`` (which
``make demo`` uses too): fast intervals, the Kubeloop rules from ``kubeloop rules``,
the documented scrape job fed the target groups pod discovery would give
(``namespace``, ``model_deployment``, see docs/monitoring.md), and an Alertmanager
webhook to the operator's receiver with a bearer token file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubetest import stop_group, wait_for
from operator_harness import free_port

from kubeloop.devcluster.monitoring import (
    alertmanager_config,
    prometheus_config,
)
from needs import prometheus_tool

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))


class Daemon:
    """A long-running process of ours with its output in a log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.log = workdir / f"{name}.log"
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._ready, f"{self.name} to be ready on {self.url}", timeout=60, state=self.tail)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()[-30:]

    def stop(self) -> None:
        stop_group(self.proc)

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()


def rules_file(workdir: Path, *args: str) -> Path:
    result = subprocess.run(
        [KUBELOOP, "rules", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    path = workdir / "kubeloop-rules.yaml"
    path.write_text(result.stdout)
    return path


def _daemon(
    workdir: Path,
    name: str,
    config: dict[str, Any],
    storage_flag: str,
    *flags: str,
    port: int | None = None,
) -> Daemon:
    """Write ``name``'s config, make its storage folder, start it on ``port`` (default: a
    free loopback port)."""
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    storage = workdir / f"{name}-data"
    storage.mkdir(exist_ok=True)
    port = port or free_port()
    argv = [
        prometheus_tool(name),
        f"--config.file={path}",
        f"{storage_flag}={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
    ]
    return Daemon(name, argv, workdir, port).start()


def alertmanager(workdir: Path, webhook_url: str, token: str, repeat_interval: str) -> Daemon:
    token_file = workdir / "webhook-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    config = alertmanager_config(
        webhook_url, token_file, group_interval="1s", repeat_interval=repeat_interval
    )
    flags = ("--cluster.listen-address=", "--log.level=debug")
    return _daemon(workdir, "alertmanager", config, "--storage.path", *flags)


def prometheus(
    workdir: Path,
    rules: Path,
    alertmanager_port: int,
    jobs: list[dict[str, Any]],
    port: int | None = None,
) -> Daemon:
    config = prometheus_config(rules, alertmanager_port, jobs, interval="1s")
    flags = ("--storage.tsdb.path", "--log.level=warn")
    return _daemon(workdir, "prometheus", config, *flags, port=port)


def query(prom: Daemon, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    data = prom.get("/api/v1/query", query=expr)
    result: list[dict[str, Any]] = data["data"]["result"]
    return result
