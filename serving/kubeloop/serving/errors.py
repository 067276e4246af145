"""One error family for the server, mapped to a response in one place.

Every client mistake raises a :class:`ServingError` subclass carrying its status
code; the REST transport turns it into ``{"error": "..."}`` (the Open Inference
Protocol error body, :func:`kubeloop.serving.rest.reply.error_reply`). Anything else
escaping the data plane is a server fault (500).
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the server answers on purpose."""

    status_code: int = 500

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequestError(ServingError):
    """Malformed JSON, wrong shape or datatype, missing or extra input (400)."""

    status_code = 400


class NotFoundError(ServingError):
    """Unknown model, version or route (404)."""

    status_code = 404


class PayloadTooLargeError(ServingError):
    """Request body over the configured limit (413)."""

    status_code = 413


class UnavailableError(ServingError):
    """No model loaded yet, or shutting down (503)."""

    status_code = 503


class ModelLoadError(ServingError):
    """A model could not be loaded or verified; the previous one keeps serving (400)."""

    status_code = 400
