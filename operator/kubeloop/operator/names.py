"""Deterministic names of child objects, so a retry or a restart never makes a twin."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_NAME = 63


def spec_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (key order does not matter)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def child_name(parent: str, suffix: str) -> str:
    """``<parent>-<suffix>`` cut to a DNS label, keeping the suffix whole."""
    room = MAX_NAME - len(suffix) - 1
    return f"{parent[:room].rstrip('-')}-{suffix}"


def model_version_name(model: str, version: int) -> str:
    """The name of version ``version`` of ``model``: ``<model>-v<version>``."""
    return child_name(model, f"v{version}")
