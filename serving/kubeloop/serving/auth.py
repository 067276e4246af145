"""Who may write: the bearer token that guards feedback and model control.

Inference, metadata, health, the repository index and ``/metrics`` stay open; the
routes that change what the server holds (feedback feeds the online metric that
alerts read; load and unload change the served model) need ``Authorization: Bearer
<token>`` when a token file is configured, and so do the two drift-report routes,
which show the distributions of the training and the live data. The token is read once at start and
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from kubeloop.serving.errors import ForbiddenError, UnauthorizedError
from kubeloop.serving.limits import ENV_PREFIX
from kubeloop.serving.settings import ServingSettings

TOKEN_SETTING = f"{ENV_PREFIX}TOKEN_FILE"
MODEL_CONTROL_SETTING = f"{ENV_PREFIX}MODEL_CONTROL"
#: longest token file read (a token is tens of bytes; this bounds a wrong file)
MAX_TOKEN_BYTES = 4096
_BEARER = b"bearer "
#: The drift-report routes also take the token in this header: the API server's service
#: proxy (``kubeloop drift-report --deployment``) drops ``Authorization`` once it has
#: authenticated the caller, and forwards the rest.
REPORT_TOKEN_HEADER = b"x-kubeloop-token"


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the setting, never the content."""


def read_token(path: str) -> bytes:
    """The token in ``path`` with surrounding whitespace removed (start-up only)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(
            f"{TOKEN_SETTING}: cannot read the token file ({exc.strerror})"
        ) from None
    token = raw.strip()
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenFileError(f"{TOKEN_SETTING}: the token file is over {MAX_TOKEN_BYTES} bytes")
    if not token:
        raise TokenFileError(f"{TOKEN_SETTING}: the token file is empty")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise TokenFileError(f"{TOKEN_SETTING}: the token must be printable ASCII without spaces")
    return token


class WriteGuard:
    """Checks the bearer token of a write request, and whether model control is on."""

    def __init__(self, token: bytes | None, model_control: bool) -> None:
        self._token = token
        self.model_control = model_control

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> WriteGuard:
        token = read_token(settings.token_file) if settings.token_file else None
        return cls(token, settings.model_control)

    def check(self, headers: Mapping[bytes, bytes]) -> None:
        """401 without a bearer token, 403 with a wrong one (when a token is set)."""
        if self._token is None:
            return
        value = headers.get(b"authorization", b"")
        if value[: len(_BEARER)].lower() != _BEARER:
            raise UnauthorizedError("this route needs 'Authorization: Bearer <token>'")
        offered = value[len(_BEARER) :].strip()
        if not hmac.compare_digest(offered, self._token):
            raise ForbiddenError("the bearer token is not valid for this server")

    def check_report(self, headers: Mapping[bytes, bytes]) -> None:
        """As :meth:`check`, with the token also accepted in ``X-Kubeloop-Token``."""
        offered = headers.get(REPORT_TOKEN_HEADER)
        if self._token is None or offered is None:
            self.check(headers)
        elif not hmac.compare_digest(offered.strip(), self._token):
            raise ForbiddenError("the token is not valid for this server")

    def check_model_control(self, headers: Mapping[bytes, bytes]) -> None:
        """The token first (who asks), then whether loads and unloads are allowed at all."""
        self.check(headers)
        if not self.model_control:
            raise ForbiddenError(
                f"model control disabled (set {MODEL_CONTROL_SETTING}=true to allow it)"
            )
