"""Run a command with its stderr on a pseudo-terminal, as a person at a terminal would.

``on_terminal(argv, env)`` gives the child a real terminal (``os.openpty``, 160 columns) as
stderr and a pipe as stdout, and returns what each received. The progress tests use it to
see the live display a terminal gets, and that stdout stays the same.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass

import pytest

#: an escape sequence (colour, cursor movement) of a terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Terminal:
    """A finished command: exit code, its stdout, and what its terminal received."""

    code: int
    stdout: str
    screen: str

    @property
    def text(self) -> str:
        """The terminal's text without escape sequences."""
        return ANSI.sub("", self.screen)


def on_terminal(argv: list[str], env: dict[str, str], timeout: float = 300) -> Terminal:
    """Run ``argv`` with stderr on a pseudo-terminal and stdout on a pipe; fail the test
    naming what the terminal showed when it does not finish within ``timeout`` seconds."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**env, "TERM": "xterm-256color"},
    )
    os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal closed it
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"{argv[:2]} did not finish in {timeout}s:\n{screen.decode()}")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    reader.join(timeout=30)
    return Terminal(code, b"".join(out).decode(), screen.decode(errors="replace"))
