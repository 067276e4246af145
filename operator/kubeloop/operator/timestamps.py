"""Times as the API server writes them: RFC 3339, whole seconds, UTC.

One format for every time the operator puts in a status, an annotation or an
Event, so stored times compare and parse the same everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(t: datetime) -> str:
    """``t`` in the API server's format."""
    return t.astimezone(UTC).strftime(FORMAT)


def now() -> str:
    """The current time in the API server's format."""
    return rfc3339(datetime.now(UTC))


def parse(value: str | None) -> datetime | None:
    """A stored RFC 3339 time (fractions and offsets allowed), or None when there is none."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
