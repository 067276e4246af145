"""A real PostgreSQL server for the SQL-source tests: ``initdb`` and ``pg_ctl`` in a
temporary folder, password (SCRAM) authentication on a loopback port.

initdb refuses to run as root, so as root the server runs as Debian's ``postgres``
user (``runuser -u postgres --``) in a folder that user owns. ``make postgresql-tools``
installs the binaries; without them a test fails saying so (never a skip).

    server = PostgresServer.start()
    server.execute("CREATE TABLE t (a int)")
    server.url()                # postgresql://kubeloop@127.0.0.1:PORT/kubeloop (no password)
    server.url(password=True)   # ... with the password, as a Secret would hold it
    server.stop()
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from needs import POSTGRESQL, missing

HOW = POSTGRESQL
USER = "kubeloop"
DATABASE = "kubeloop"
PASSWORD = "s3cret-Pa55-word"
RUN_AS = "postgres"


def _binary(name: str) -> str:
    """``name`` on PATH, else the newest in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if not candidates:
        missing(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin", HOW)
    return max(candidates, key=lambda p: int(Path(p).parts[-3]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; ``stop`` ends it and removes its folder."""

    root: Path
    port: int
    prefix: tuple[str, ...]

    @classmethod
    def start(cls) -> PostgresServer:
        prefix: tuple[str, ...] = ()
        root = Path(tempfile.mkdtemp(prefix="kubeloop-pg-"))
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                missing("runuser not found (util-linux)", HOW)
            try:
                shutil.chown(root, user=RUN_AS)
            except LookupError:
                missing(f"no {RUN_AS!r} user to run PostgreSQL as (root cannot)", HOW)
            prefix = ("runuser", "-u", RUN_AS, "--")
        server = cls(root, 0, prefix)
        server._init()
        for attempt in range(3):  # another process may take the free port first
            server.port = _free_port()
            try:
                server._serve()
                break
            except RuntimeError:
                if attempt == 2:
                    shutil.rmtree(root, ignore_errors=True)
                    raise
        server.execute(f"CREATE DATABASE {DATABASE}", database="postgres")
        return server

    def _serve(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        log = str(self.root / "server.log")
        self._pg_ctl("start", "-w", "-t", "60", "-l", log, "-o", options)

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}\n{tail}")

    def _init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.prefix:
            shutil.chown(pwfile, user=RUN_AS)
        self._run(
            _binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        pwfile.unlink()

    def _pg_ctl(self, *args: str) -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), *args)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, *, password: bool = False, user: str = USER, database: str = DATABASE) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def execute(self, *statements: str, database: str = DATABASE) -> None:
        """Run statements as the superuser, each committed."""
        with psycopg.connect(self.url(password=True, database=database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "60")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
