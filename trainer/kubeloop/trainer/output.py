"""Publishing artifacts: directories that appear whole, on any fsspec filesystem."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from kubeloop.contracts.artifacts import join


class OutputError(Exception):
    """An output URI nothing can be written to; found before any work."""


def check_target(uri: str) -> None:
    """Fail early on an output URI whose filesystem is unknown or not installed (s3fs, ...)."""
    try:
        fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise OutputError(f"--out {uri}: {exc}") from exc


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return bool(fs.exists(path))


@contextmanager
def staging() -> Iterator[Path]:
    """A local scratch directory for files about to be published."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-") as tmp:
        yield Path(tmp)


def publish(local: Path, uri: str, last: str | None = None, replace: bool = True) -> None:
    """Copy the files of ``local`` to the directory ``uri`` so it never looks half-written.

    A local destination is filled under a temporary name and renamed into
    place. An existing directory is replaced (renamed aside first, so the path
    is missing only between two renames) or, with ``replace=False``
    (content-addressed snapshots, where a folder already there holds the same
    data), kept when it is complete (holds ``last``). Elsewhere (object stores
    have no rename) files are uploaded one by one, ``last`` (the file that
    marks an artifact complete) after all the others.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        if not replace and _complete(target, last):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            os.chmod(scratch, 0o777 & ~_umask())  # mkdtemp makes it 0700; readers run as others
            for item in local.iterdir():
                _place(item, scratch / item.name)
            _swap(scratch, target, keep_theirs=None if replace else last)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    names = sorted(p.name for p in local.iterdir() if p.name != last)
    for name in [*names, *([last] if last and (local / last).exists() else [])]:
        fs.put_file(str(local / name), join(path, name))


def _place(item: Path, to: Path) -> None:
    """Put a staged file in a local destination: a second link to it when both are on one
    filesystem (a gigabyte copy costs seconds; the staged name is deleted right after),
    else a copy."""
    try:
        os.link(item, to)
    except OSError:
        shutil.copy2(item, to)


def _complete(target: Path, last: str | None) -> bool:
    return target.is_dir() and (last is None or (target / last).exists())


def _swap(scratch: Path, target: Path, keep_theirs: str | None) -> None:
    """Rename ``scratch`` to ``target``, moving what is there aside first. With
    ``keep_theirs``, a complete folder another writer renamed in meanwhile wins."""
    aside: Path | None = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(scratch, target)
    except OSError:
        if keep_theirs is None or not _complete(target, keep_theirs):
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


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
