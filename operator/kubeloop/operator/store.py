"""Reading the artifact store through fsspec, for verification only.

The operator never writes artifacts and never deletes them: Jobs write, the
store keeps everything (deleting a resource leaves its artifacts in place).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

from kubeloop.contracts import storage

CHUNK = 1 << 20


class StoreUnavailableError(Exception):
    """The store cannot be reached from here (no driver, no credentials)."""


def sha256_of(uri: str) -> str:
    """Hex sha256 of the object at ``uri``, streamed; FileNotFoundError when missing."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except (ImportError, ValueError) as exc:  # unknown protocol or missing driver
        raise StoreUnavailableError(f"{uri}: {exc}") from exc
    except Exception as exc:  # a driver passing on its SDK's refusal (adlfs)
        if not storage.is_store_error(exc):
            raise
        raise StoreUnavailableError(f"{uri}: {' '.join(str(exc).split())}") from exc
    return digest.hexdigest()


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object from the store, or None when it cannot be read."""
    try:
        with fsspec.open(uri, "rt") as handle:
            value = json.load(handle)
    except (OSError, ImportError, ValueError):
        return None
    except Exception as exc:
        if not storage.is_store_error(exc):
            raise
        return None
    return value if isinstance(value, dict) else None


def list_json(folder: str) -> list[dict[str, Any]]:
    """Every JSON object directly in ``folder`` (``*.json``, by name); none when the folder
    is missing or unreadable. A file being replaced as it is read is skipped."""
    names = _json_names(folder)
    found = (read_json(name) for name in names)
    return [value for value in found if value is not None]


def count_json(folder: str) -> int:
    """How many ``*.json`` files ``folder`` holds (one listing, no reads)."""
    return len(_json_names(folder))


def _json_names(folder: str) -> list[str]:
    try:
        fs, path = fsspec.core.url_to_fs(folder)
        names = fs.ls(path, detail=False)
    except (OSError, ImportError, ValueError):
        return []
    except Exception as exc:
        if not storage.is_store_error(exc):
            raise
        return []
    return sorted(fs.unstrip_protocol(n) for n in names if str(n).endswith(".json"))
