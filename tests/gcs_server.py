"""A GCS emulator for the gs:// tests: fake-gcs-server over plain HTTP with its filesystem
backend in a temporary folder, on a free loopback port.

``make storage-tools`` builds it (hack/toolchain.sh); without it a test fails saying so.
The emulator checks no credentials, so these tests cover the gs:// data paths (gcsfs
reading, listing, writing) and not GCS authentication:

    server = GcsServer.start()
    server.make_bucket("data")
    server.env()      # what a `kubeloop` process needs to reach it (anonymous)
    server.stop()
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3_server import end, free_port, toolchain_binary, wait_listening


@dataclass
class GcsServer:
    """A running emulator; ``stop`` ends it and removes its folder."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls) -> GcsServer:
        binary = toolchain_binary("fake-gcs-server")
        server = cls(Path(tempfile.mkdtemp(prefix="kubeloop-gcs-")))
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
        log = (self.root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-backend", "filesystem", "-filesystem-root", str(self.root / "buckets"),
                "-external-url", self.endpoint, "-public-host", f"127.0.0.1:{self.port}",
                "-log-level", "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_listening(self.proc, self.port, self.root / "server.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables a client process needs: gcsfs's emulator address, anonymous access
        (fsspec's FSSPEC_GCS_TOKEN), and no gRPC bucket-type probe (the emulator has no
        gRPC control API; gcsfs would wait 60 s for it per bucket)."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def fs(self) -> Any:
        """A gcsfs filesystem on this emulator (the plain class: no gRPC probe)."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(endpoint_url=self.endpoint, token="anon", skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if new); its ``gs://`` URI."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"gs://{name}"

    def stop(self) -> None:
        try:
            end(self.proc)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
