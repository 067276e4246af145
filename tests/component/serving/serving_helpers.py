"""Helpers for the serving component tests: the server as a real process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from kubeloop.contracts.artifacts import ArtifactLayout
from needs import prometheus_tool

KUBELOOP = Path(sys.executable).with_name("kubeloop")
RUNNING = re.compile(r"Uvicorn running on (https?)://127\.0\.0\.1:(\d+)")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    #: how clients check an https server's certificate (httpx's ``verify``)
    verify: ssl.SSLContext | bool = True

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def client(self, **kw: object) -> httpx.Client:
        kw.setdefault("verify", self.verify)
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]

    def ready(self) -> bool:
        try:
            ready = httpx.get(f"{self.url}/v2/health/ready", timeout=5, verify=self.verify)
            return ready.status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of the samples on /metrics that have ``labels`` (None when there are
        none): one sample when the labels name one series. A sum, as a new version's
        series are exported at 0 (other protocols, say) next to the one counted."""
        text = httpx.get(f"{self.url}/metrics", timeout=10, verify=self.verify).text
        values = []
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
            if all(found.get(k) == v for k, v in labels.items()):
                values.append(float(value))
        return sum(values) if values else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    model: Path | str,
    *args: str,
    env: dict[str, str] | None = None,
    ready: bool = True,
    verify: ssl.SSLContext | bool = True,
) -> Server:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    full_env.update({"KUBELOOP_SERVING_DRAIN_SECONDS": "0", **(env or {})})
    proc = subprocess.Popen(
        [
            str(KUBELOOP),
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    server = Server(proc, verify=verify)
    port: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            m = RUNNING.search(line)
            if m:
                port.append(f"{m.group(1)}://127.0.0.1:{m.group(2)}")

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for("the server to listen", lambda: bool(port) or proc.poll() is not None)
        if not port:
            raise AssertionError(f"server exited:\n{server.log}")
        server.url = port[0]
        if ready:
            wait_for(f"the server to be ready; log:\n{server.log}", server.ready)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def serving(model: Path | str, *args: str, **kw: object) -> Iterator[Server]:
    server = start_server(model, *args, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def train(
    data: Path, target: str, task: str, estimator: str, out: Path, params: str = "{}"
) -> Path:
    """Trains with the real trainer (``kubeloop train``) into ``out``; fails the test on error."""
    result = subprocess.run(
        [
            str(KUBELOOP), "train", "--data", str(data), "--target", target, "--task", task,
            "--estimator", estimator, "--params", params, "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"kubeloop train failed:\n{result.stdout}\n{result.stderr}"
    model = out / ArtifactLayout.MODEL
    assert model.exists(), f"no {ArtifactLayout.MODEL} in {out}: {os.listdir(out)}"
    return out


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def prometheus_scraping(workdir: Path, job: dict[str, object]) -> Iterator[str]:
    """A real Prometheus scraping every second with the one scrape ``job``; yields its URL."""
    config = workdir / "prometheus.yml"
    interval = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config.write_text(yaml.safe_dump({"global": interval, "scrape_configs": [job]}))
    port = free_port()
    argv = [
        prometheus_tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(30)
