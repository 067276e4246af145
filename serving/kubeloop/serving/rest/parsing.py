"""JSON parsing and the client-value wording shared by the V2 and V1 codecs."""

from __future__ import annotations

import json
from typing import Any

import orjson

from kubeloop.serving.errors import BadRequestError


def loads(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity literals (Python's json.dumps writes them) are accepted
    so that validation, not the parser, reports them per input."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequestError(f"malformed JSON: {exc}") from None


def first_non_number(flat: list[Any]) -> tuple[int, Any]:
    """Position and value of the first JSON value that is not a number."""
    for pos, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return pos, v
    return 0, flat[0] if flat else None


def show(value: Any) -> str:
    """A client's value as an error message quotes it (JSON null, cut to 40 characters)."""
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
