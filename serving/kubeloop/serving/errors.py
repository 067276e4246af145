"""One error family for the server, mapped to a response in one place.

Every client mistake raises a :class:`ServingError` subclass carrying its status
code; the REST transport turns it into ``{"error": "..."}`` (the Open Inference
Protocol error body, :func:`kubeloop.serving.rest.reply.error_reply`). Anything else
escaping the data plane is a server fault (500).
"""

from __future__ import annotations

import math


class ServingError(Exception):
    """Base of every error the server answers on purpose."""

    status_code: int = 500
    #: extra response headers (name, value), lower-case bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequestError(ServingError):
    """Malformed JSON, wrong shape or datatype, missing or extra input (400)."""

    status_code = 400


class UnauthorizedError(ServingError):
    """A write route called without a bearer token (401, with the challenge header)."""

    status_code = 401
    headers = ((b"www-authenticate", b"Bearer"),)


class ForbiddenError(ServingError):
    """A wrong bearer token, or model control is disabled (403)."""

    status_code = 403


class NotFoundError(ServingError):
    """Unknown model, version or route (404)."""

    status_code = 404


class PayloadTooLargeError(ServingError):
    """Request body over the configured limit (413)."""

    status_code = 413


class TooManyRequestsError(ServingError):
    """Over a rate budget: retry after the seconds given (the Retry-After header)."""

    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.headers = ((b"retry-after", str(max(1, math.ceil(retry_after))).encode()),)


class UnavailableError(ServingError):
    """No model loaded yet, or shutting down (503)."""

    status_code = 503


class ModelLoadError(ServingError):
    """A model could not be loaded or verified; the previous one keeps serving (400)."""

    status_code = 400
