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
