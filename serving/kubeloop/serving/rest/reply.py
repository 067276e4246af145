"""What a REST route answers (status, body, headers), and the one mapping of errors
to it that the FastAPI routes and the ASGI fast path share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from kubeloop.serving.errors import BadRequestError, ServingError

log = logging.getLogger("kubeloop.serving")

JSON = b"application/json"
Headers = Sequence[tuple[bytes, bytes]]
#: shared by every JSON reply, hence a tuple
JSON_HEADERS: Headers = ((b"content-type", JSON),)


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: Headers


def json_reply(doc: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc), JSON_HEADERS)


def error_reply(exc: Exception) -> Reply:
    """Any exception as the OIP error body ``{"error": "..."}``: a ServingError with its
    status, the framework's HTTP and validation errors as theirs, anything else a
    logged server fault (500)."""
    error = as_serving_error(exc)
    try:
        body = orjson.dumps({"error": error.message})
    except TypeError:  # a message quoting something that is not Unicode: escape it
        body = orjson.dumps({"error": ascii(error.message)[1:-1]})
    headers = (*JSON_HEADERS, *error.headers) if error.headers else JSON_HEADERS
    return Reply(error.status_code, body, headers)


def as_serving_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, RequestValidationError):
        return BadRequestError(str(exc.errors()))
    if isinstance(exc, HTTPException):
        return ServingError(str(exc.detail), exc.status_code)
    log.error("request failed", exc_info=exc)
    return ServingError("internal error; see the server log")
