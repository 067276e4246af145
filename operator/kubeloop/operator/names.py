"""Deterministic names of child objects, so a retry or a restart never makes a twin."""

from __future__ import annotations

MAX_NAME = 63


def child_name(parent: str, suffix: str, limit: int = MAX_NAME) -> str:
    """``<parent>-<suffix>`` cut to ``limit`` characters (a DNS label), keeping the suffix
    whole."""
    room = limit - len(suffix) - 1
    return f"{parent[:room].rstrip('-')}-{suffix}"


def model_version_name(model: str, version: int) -> str:
    """The name of version ``version`` of ``model``: ``<model>-v<version>``."""
    return child_name(model, f"v{version}")
