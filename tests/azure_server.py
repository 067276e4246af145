"""An Azure Blob Storage emulator for the az:// tests: Azurite's blob service (Node.js)
with its data in a temporary folder, one account with a key of the tests' own, on a free
loopback port, telemetry off (no traffic leaves the machine).

``make storage-tools`` installs it (hack/install-azurite.sh, from the npm registry);
without it a test fails saying so. Azurite checks Shared Key signatures, so a wrong
account key is refused as Azure refuses it:

    server = AzuriteServer.start()
    server.make_container("data")
    server.env()                 # AZURE_STORAGE_CONNECTION_STRING a process reads
    server.env(key=OTHER_KEY)    # the same with a wrong key
    server.stop()
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from needs import missing
from s3_server import HOW, LocalServer

ACCOUNT = "kubeloopdev"
KEY = base64.b64encode(b"kubeloop-azurite-account-key-0123456789").decode()
OTHER_KEY = base64.b64encode(b"not-the-account-key-at-all-9876543210").decode()


def azurite_blob() -> str:
    """The azurite-blob that hack/install-azurite.sh installed."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["bash", str(root / "hack" / "install-azurite.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    path = Path(out.stdout.strip()) / "node_modules" / ".bin" / "azurite-blob"
    if out.returncode != 0 or not (path.parent.parent.parent / ".stamp").exists():
        missing("azurite not installed", HOW)
    if shutil.which("node") is None:
        missing("node not found on PATH (Azurite runs on Node.js)", HOW)
    return str(path)


@dataclass
class AzuriteServer(LocalServer):
    """Azurite's blob service, data under ``root``, one account with the tests' key."""

    NAME: ClassVar[str] = "azurite"

    @classmethod
    def binary(cls) -> str:
        return azurite_blob()

    def argv(self, binary: str) -> list[str]:
        return [
            binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--location", str(self.root), "--silent", "--disableTelemetry",
            "--skipApiVersionCheck", "--loose",
        ]  # fmt: skip

    def environ(self) -> dict[str, str]:
        return {"AZURITE_ACCOUNTS": f"{ACCOUNT}:{KEY}"}

    def connection_string(self, key: str = KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def env(self, *, key: str = KEY) -> dict[str, str]:
        """The standard variable a client process reads to reach this account."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(key)}

    def fs(self) -> Any:
        """An adlfs filesystem on this account."""
        from adlfs import AzureBlobFileSystem

        return AzureBlobFileSystem(
            connection_string=self.connection_string(), skip_instance_cache=True
        )

    def make_container(self, name: str) -> str:
        """Create ``name`` (if new); its ``az://`` URI."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"az://{name}"
