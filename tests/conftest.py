"""Every tier: the shared helper modules beside this file (``needs``, ``helmchart``,
``postgres``, ``loop_objects``) and the ``postgres`` fixture (a real PostgreSQL server per
session).

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

from postgres import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres.py); stopped at the end."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()
