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

from dataclasses import dataclass
from typing import Any, ClassVar

from s3_server import LocalServer, toolchain_binary


@dataclass
class GcsServer(LocalServer):
    """fake-gcs-server, filesystem backend under ``root/buckets``."""

    NAME: ClassVar[str] = "gcs"

    @classmethod
    def binary(cls) -> str:
        return toolchain_binary("fake-gcs-server")

    def argv(self, binary: str) -> list[str]:
        return [
            binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "filesystem", "-filesystem-root", str(self.root / "buckets"),
            "-external-url", self.endpoint, "-public-host", f"127.0.0.1:{self.port}",
            "-log-level", "warn",
        ]  # fmt: skip

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
