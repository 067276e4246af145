"""Every tier: the shared helper modules beside this file (``needs``, ``helmchart``,
``postgres``, ``s3_server``, ``gcs_server``, ``azure_server``, ``loop_objects``) and the
``postgres``, ``s3``, ``gcs`` and ``azure`` fixtures (a real PostgreSQL server, a real S3
server, a GCS and an Azure Blob emulator per session).

``--import-mode=importlib`` puts no test folder on ``sys.path``; the helpers every tier
imports by name live here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from azure_server import AzuriteServer  # noqa: E402
from gcs_server import GcsServer  # noqa: E402
from postgres import PostgresServer  # noqa: E402
from s3_server import S3Server  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres.py); stopped at the end."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 server (Versity Gateway) for the session (tests/s3_server.py); stopped at
    the end."""
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsServer]:
    """A GCS emulator (fake-gcs-server) for the session (tests/gcs_server.py); stopped at
    the end."""
    server = GcsServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure() -> Iterator[AzuriteServer]:
    """An Azure Blob emulator (Azurite) for the session (tests/azure_server.py); stopped at
    the end."""
    server = AzuriteServer.start()
    try:
        yield server
    finally:
        server.stop()
