"""Bounds on a request's metadata: its id and its free-form ``parameters``.

Tensor data is bounded by the body size and ``max_rows``; these bound what a request
carries besides, which the server echoes (the id), keeps (the id, in the feedback store
and the prediction log) or walks (parameters). The limits are settings, read once at
start; the checks are pure and raise a :class:`BadRequestError` naming the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.serving.errors import BadRequestError

DEFAULT_MAX_REQUEST_ID = 256
DEFAULT_MAX_PARAMETER_KEYS = 64
DEFAULT_MAX_PARAMETER_BYTES = 64 * 1024
DEFAULT_MAX_PARAMETER_DEPTH = 4
#: the prefix of every serving setting's environment variable
ENV_PREFIX = "KUBELOOP_SERVING_"


@dataclass(frozen=True)
class RequestLimits:
    """The metadata bounds one server applies to every request."""

    max_request_id: int = DEFAULT_MAX_REQUEST_ID
    max_parameter_keys: int = DEFAULT_MAX_PARAMETER_KEYS
    max_parameter_bytes: int = DEFAULT_MAX_PARAMETER_BYTES
    max_parameter_depth: int = DEFAULT_MAX_PARAMETER_DEPTH

    def check_id(self, value: str, where: str) -> str:
        """``value`` when it is at most ``max_request_id`` characters long."""
        if len(value) > self.max_request_id:
            raise BadRequestError(
                f"{where} has {len(value)} characters; at most {self.max_request_id} are "
                f"allowed ({ENV_PREFIX}MAX_REQUEST_ID)"
            )
        return value

    def check_parameters(self, params: Any, where: str) -> None:
        """Refuse ``parameters`` nested too deep, with too many keys (all levels counted)
        or too large once serialized. The walk stops at the first bound crossed."""
        if params is None:
            return
        keys = 0
        stack: list[tuple[Any, int]] = [(params, 1)]
        while stack:
            value, depth = stack.pop()
            if not isinstance(value, dict | list):
                continue
            if depth > self.max_parameter_depth:
                raise BadRequestError(
                    f"{where}: 'parameters' nest deeper than {self.max_parameter_depth} levels "
                    f"({ENV_PREFIX}MAX_PARAMETER_DEPTH)"
                )
            if isinstance(value, dict):
                keys += len(value)
                if keys > self.max_parameter_keys:
                    raise BadRequestError(
                        f"{where}: 'parameters' hold more than {self.max_parameter_keys} keys "
                        f"({ENV_PREFIX}MAX_PARAMETER_KEYS)"
                    )
                value = list(value.values())
            stack.extend((v, depth + 1) for v in value)
        size = _serialized_size(params)
        if size > self.max_parameter_bytes:
            raise BadRequestError(
                f"{where}: 'parameters' are {size} bytes as JSON; at most "
                f"{self.max_parameter_bytes} are allowed ({ENV_PREFIX}MAX_PARAMETER_BYTES)"
            )


def _serialized_size(params: Any) -> int:
    try:
        return len(orjson.dumps(params))
    except TypeError:  # integers beyond 64 bits (the stdlib parser's): their digits
        return len(repr(params).encode())
