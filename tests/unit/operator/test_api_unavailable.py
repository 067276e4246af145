"""Which errors mean "the API server is down or not serving yet", and what a pass makes of them."""

from __future__ import annotations

import kopf
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from kubeloop.operator.handlers.common import API_RETRY_SECONDS, retry_soon_when_unavailable
from kubeloop.operator.kube import unavailable
from kubeloop.operator.settings import OperatorSettings


@pytest.mark.parametrize(
    "exc",
    [
        urllib3.exceptions.MaxRetryError(None, "/api", ConnectionRefusedError()),
        urllib3.exceptions.ProtocolError("Connection aborted."),
        ConnectionResetError(),
        ApiException(status=429, reason="storage is (re)initializing"),
        ApiException(status=503),
        ApiException(status=0, reason="SSLError"),
    ],
)
def test_an_unreachable_or_starting_api_server_is_unavailable(exc: BaseException) -> None:
    assert unavailable(exc)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_an_answer_about_the_request_is_not(status: int) -> None:
    assert not unavailable(ApiException(status=status))
    assert not unavailable(ValueError("bad spec"))


def test_a_pass_retries_within_seconds_and_other_errors_pass_through() -> None:
    settings = OperatorSettings(resync_seconds=120)
    with pytest.raises(kopf.TemporaryError) as caught, retry_soon_when_unavailable(settings):
        raise ApiException(status=503)
    assert caught.value.delay == API_RETRY_SECONDS
    with (
        pytest.raises(kopf.TemporaryError) as caught,
        retry_soon_when_unavailable(OperatorSettings(resync_seconds=1)),
    ):
        raise ConnectionRefusedError()
    assert caught.value.delay == 1  # never later than the resync would have come
    with pytest.raises(KeyError), retry_soon_when_unavailable(settings):
        raise KeyError("a bug stays a bug")
