"""JSON parsing and the client-value wording shared by the V2 and V1 codecs."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.tensors import FP64_MAX, INT_RANGE

#: a UTF-16 surrogate code point: JSON can spell one (``"\ud800"``) but it is no character
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity literals (Python's json.dumps writes them) are accepted
    so that validation, not the parser, reports them per input. Every string is valid
    Unicode: orjson refuses lone surrogates, and the stdlib fallback's result is checked."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequestError(f"malformed JSON: {exc}") from None
    where = _first_surrogate(doc)
    if where is not None:
        raise BadRequestError(f"malformed JSON: {where} holds a lone UTF-16 surrogate")
    return doc


def _first_surrogate(doc: Any) -> str | None:
    """Where the first string (or object key) holding a surrogate is, as a JSON path."""
    stack: list[tuple[str, Any]] = [("$", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if _SURROGATE.search(k):
                    return f"a key of {path}"
                stack.append((f"{path}.{show(k)}", v))
    return None


def first_non_number(flat: list[Any]) -> tuple[int, Any] | None:
    """Position and value of the first JSON value that is not a number (None: all are)."""
    for pos, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return pos, v
    return None


def may_hold_booleans(body: bytes) -> bool:
    """Whether a JSON body can hold a ``true`` or ``false`` literal: one byte search, so
    that numeric columns (which numpy reads with booleans as 1 and 0) are scanned for
    booleans only when the body has any."""
    return b"true" in body or b"false" in body


def first_boolean(values: list[Any]) -> tuple[int, bool] | None:
    """Position and value of the first JSON ``true``/``false`` (None: there is none)."""
    for pos, v in enumerate(values):
        if isinstance(v, bool):
            return pos, v
    return None


def first_out_of_range(flat: list[Any], datatype: str) -> int | None:
    """Position of the first number ``datatype`` cannot hold, among numbers numpy kept as
    objects (integers beyond 64 bits, or int64 beside uint64 values); None: they all fit."""
    low, high = INT_RANGE.get(datatype, (-FP64_MAX, FP64_MAX))
    return next((p for p, v in enumerate(flat) if not low <= v <= high), None)


def show(value: Any) -> str:
    """A client's value as an error message quotes it (JSON null, true and false; cut to 40
    characters)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return cut(repr(value))


def cut(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, for quoting a client's text in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
