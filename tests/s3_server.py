"""A real S3 server for the object-storage tests: Versity Gateway (``versitygw``) with its
posix backend in a temporary folder, root credentials, on a free loopback port.

``make storage-tools`` (hack/toolchain.sh versitygw fake-gcs-server) builds the pinned tag
from the Go module proxy into ~/.cache/kubeloop/bin; without it a test fails saying so
(never a skip). Every tier uses it the same way:

    server = S3Server.start()
    server.make_bucket("data")
    server.env()                  # AWS_* variables a `kubeloop` process reads
    server.env(secret="wrong")    # the same with a wrong secret key
    server.fs().pipe("data/x.csv", b"a\\n1\\n")
    server.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from needs import missing

HOW = (
    "run `make storage-tools` (hack/toolchain.sh versitygw fake-gcs-server: the S3 and GCS "
    "servers from the Go module proxy, a few minutes cold; hack/install-azurite.sh: Azurite "
    "from the npm registry)"
)
ACCESS_KEY = "kubeloop-access-key"
SECRET_KEY = "kubeloop-Secret-Value-42"
REGION = "us-east-1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toolchain_binary(name: str) -> str:
    """A server binary hack/toolchain.sh built (or TEST_ASSET_<NAME>)."""
    from kubeloop.devcluster.binaries import Binaries, MissingBinaryError

    try:
        return str(Binaries.resolve((name,))[name])
    except MissingBinaryError:
        missing(f"{name} not built", HOW)


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll until ``port`` accepts a connection; RuntimeError (with the log's tail) when
    the process exits first or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(f"{proc.args[0]} did not listen on 127.0.0.1:{port} in {START_TIMEOUT}s")


def end(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``proc`` (kill it when it lingers)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class LocalServer:
    """A server process on a free loopback port with its data in a temporary folder;
    ``stop`` ends it and removes the folder. Subclasses say which binary, its arguments
    and environment; ``start`` retries on a port another process took first."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: the temporary folder's prefix
    NAME: ClassVar[str] = "server"

    @classmethod
    def binary(cls) -> str:
        raise NotImplementedError

    def argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        """Variables beyond the test process's own."""
        return {}

    @classmethod
    def start(cls: type[S]) -> S:
        binary = cls.binary()
        server = cls(Path(tempfile.mkdtemp(prefix=f"kubeloop-{cls.NAME}-")))
        for attempt in range(3):  # another process may take the free port first
            try:
                server._serve(binary)
                return server
            except RuntimeError:
                if attempt == 2:
                    shutil.rmtree(server.root, ignore_errors=True)
                    raise
        raise AssertionError("unreachable")

    def _serve(self, binary: str) -> None:
        self.port = free_port()
        with (self.root / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(binary),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environ()},
            )
        wait_listening(self.proc, self.port, self.root / "server.log")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            end(self.proc)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


S = TypeVar("S", bound=LocalServer)


@dataclass
class S3Server(LocalServer):
    """Versity Gateway, posix backend under ``root/buckets``."""

    NAME: ClassVar[str] = "s3"

    @classmethod
    def binary(cls) -> str:
        return toolchain_binary("versitygw")

    def argv(self, binary: str) -> list[str]:
        (self.root / "buckets").mkdir(exist_ok=True)
        args = [binary, "--port", f"127.0.0.1:{self.port}", "--region", REGION, "--quiet"]
        return [*args, "posix", str(self.root / "buckets")]

    def environ(self) -> dict[str, str]:
        """The root credentials: in the environment, not the process list."""
        return {"ROOT_ACCESS_KEY_ID": ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": SECRET_KEY}

    def env(self, *, access: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict[str, str]:
        """The standard variables a client process reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def fs(self) -> Any:
        """An s3fs filesystem on this server (fresh, so no cached listings)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            # No region: s3fs would send it as a LocationConstraint, which us-east-1 refuses.
            client_kwargs={"endpoint_url": self.endpoint},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if new); its ``s3://`` URI."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"
