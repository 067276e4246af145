"""Files generated from code and committed (CRDs, dashboards): write them, or check them.

One command line for each generator, ``python -m <module> DIR [--check]``: without
``--check`` the files are written; with it, nothing is written and the exit status says
whether the committed files are what the code generates (``make verify-*``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def sync(
    describe: str, make_target: str, files: Callable[[], dict[str, str]], argv: list[str] | None
) -> int:
    """Write ``files()`` (name -> text) into the directory given on the command line, or
    with ``--check`` name the stale ones and return 1."""
    parser = argparse.ArgumentParser(description=describe)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="fail when the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in files().items():
        path = args.directory / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale (run `make {make_target}`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0
