"""Conditions the way cert-manager keeps them.

``lastTransitionTime`` moves only when ``status`` changes, every condition
carries the generation it was computed for, and callers compare the result with
what is stored so status is written only when something changed.
"""

from __future__ import annotations

from typing import Any, Literal

from kubeloop.contracts.status import READY
from kubeloop.operator.timestamps import now

Status = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: Status,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; other conditions are kept as they are."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    new: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now() if changed or old is None else old["lastTransitionTime"],
    }
    if generation is not None:
        new["observedGeneration"] = generation
    rest = [c for c in conditions if c.get("type") != type_]
    return sorted([*rest, new], key=lambda c: str(c["type"]))


def get_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type in a status dict, if any."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def is_true(status: dict[str, Any] | None, type_: str = READY) -> bool:
    """Whether the condition is present and True."""
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == "True"
