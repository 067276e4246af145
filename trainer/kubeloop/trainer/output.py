"""Publishing results: artifact directories that appear whole, and the summary line."""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from kubeloop.trainer.artifacts import Summary

TERMINATION_LOG_ENV = "KUBELOOP_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with ``/``."""
    return posixpath.join(base.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(path))


@contextmanager
def staging() -> Iterator[Path]:
    """A local scratch directory for files about to be published."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-") as tmp:
        yield Path(tmp)


def publish(local: Path, uri: str, last: str | None = None) -> None:
    """Copy the files of ``local`` to the directory ``uri`` so it never looks half-written.

    A local destination is filled under a temporary name and renamed into
    place. Elsewhere (object stores have no rename) files are uploaded one by
    one with ``last`` (the metadata that marks an artifact complete) uploaded
    after all the others.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        os.chmod(scratch, 0o777 & ~_umask())  # mkdtemp makes it 0700; readers run as others
        for item in local.iterdir():
            shutil.copy2(item, scratch / item.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
        return
    names = sorted(p.name for p in local.iterdir() if p.name != last)
    for name in [*names, *([last] if last and (local / last).exists() else [])]:
        fs.put_file(str(local / name), join(path, name))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def add(local: Path, uri: str) -> None:
    """Add one file to an existing artifact directory, never exposing it half-written."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(local, scratch)
        os.replace(scratch, target)
        return
    fs.put_file(str(local), path)


def termination_log() -> str | None:
    """Where the kubelet reads the termination message, if writable here."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        return path
    if os.path.exists(DEFAULT_TERMINATION_LOG) and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def report(summary: Summary) -> None:
    """Print the summary line and write it as the termination message."""
    line = summary.to_line()
    print(line, flush=True)
    path = termination_log()
    if path:
        try:
            Path(path).write_text(line)
        except OSError as exc:
            print(f"cannot write the termination message to {path}: {exc}", file=sys.stderr)
