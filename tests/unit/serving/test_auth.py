"""The write guard: reading the token file and checking a request's bearer token."""

from __future__ import annotations

import pytest

from kubeloop.serving.auth import MAX_TOKEN_BYTES, TokenFileError, WriteGuard, read_token
from kubeloop.serving.errors import ForbiddenError, UnauthorizedError

TOKEN = b"Zq8_tok-en"


def test_the_token_is_the_file_without_surrounding_whitespace(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"\r\n  " + TOKEN + b"\n\n")
    assert read_token(str(path)) == TOKEN


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "empty"),
        (b" \n\t", "empty"),
        (b"two words", "printable ASCII"),
        (b"tab\tinside", "printable ASCII"),
        ("t\u00f6ken".encode(), "printable ASCII"),
        (b"x" * (MAX_TOKEN_BYTES + 1), "over"),
    ],
)
def test_an_unusable_token_file_names_the_setting_not_the_content(tmp_path, content, says):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(TokenFileError) as err:
        read_token(str(path))
    assert "KUBELOOP_SERVING_TOKEN_FILE" in str(err.value)
    assert says in str(err.value)
    assert "words" not in str(err.value)
    assert "inside" not in str(err.value)


def test_a_missing_token_file(tmp_path):
    with pytest.raises(TokenFileError, match="KUBELOOP_SERVING_TOKEN_FILE: cannot read"):
        read_token(str(tmp_path / "absent"))


def headers(value: bytes | None) -> dict[bytes, bytes]:
    return {} if value is None else {b"authorization": value}


@pytest.mark.parametrize(
    "value", [None, b"", b"Bearer", TOKEN, b"Basic " + TOKEN, b"Token " + TOKEN, b"Bearer" + TOKEN]
)
def test_no_bearer_token_is_401(value):
    with pytest.raises(UnauthorizedError) as err:
        WriteGuard(TOKEN, model_control=True).check(headers(value))
    assert err.value.status_code == 401
    assert err.value.headers == ((b"www-authenticate", b"Bearer"),)


@pytest.mark.parametrize(
    "value",
    [b"Bearer ", b"Bearer x", b"Bearer " + TOKEN[:-1], b"Bearer " + TOKEN + b"x",
     b"Bearer " + TOKEN.upper(), b"Bearer " + TOKEN + b" " + TOKEN],
)  # fmt: skip
def test_a_wrong_token_is_403(value):
    with pytest.raises(ForbiddenError) as err:
        WriteGuard(TOKEN, model_control=True).check(headers(value))
    assert err.value.status_code == 403


@pytest.mark.parametrize(
    "value", [b"Bearer " + TOKEN, b"bearer " + TOKEN, b"BEARER " + TOKEN, b"Bearer  " + TOKEN]
)
def test_the_right_token_passes(value):
    WriteGuard(TOKEN, model_control=True).check(headers(value))


def test_without_a_token_file_writes_are_open_but_model_control_still_needs_enabling():
    WriteGuard(None, model_control=False).check({})
    with pytest.raises(ForbiddenError, match="model control disabled"):
        WriteGuard(None, model_control=False).check_model_control({})
    WriteGuard(None, model_control=True).check_model_control({})


def test_model_control_checks_the_token_first():
    guard = WriteGuard(TOKEN, model_control=False)
    with pytest.raises(UnauthorizedError):
        guard.check_model_control({})
    with pytest.raises(ForbiddenError, match="model control disabled"):
        guard.check_model_control(headers(b"Bearer " + TOKEN))


def test_the_drift_report_takes_the_token_in_its_own_header_too():
    guard = WriteGuard(TOKEN, model_control=False)
    guard.check_report({b"x-kubeloop-token": TOKEN})
    guard.check_report({b"x-kubeloop-token": b" " + TOKEN + b" "})
    guard.check_report({b"authorization": b"Bearer " + TOKEN})
    with pytest.raises(UnauthorizedError):
        guard.check_report({})
    for wrong in (b"", b"wrong", TOKEN + b"x"):
        with pytest.raises(ForbiddenError):
            guard.check_report({b"x-kubeloop-token": wrong})
    with pytest.raises(ForbiddenError):  # a wrong header token is not rescued by another
        guard.check_report({b"x-kubeloop-token": b"wrong", b"authorization": b"Bearer " + TOKEN})
    WriteGuard(None, model_control=False).check_report({b"x-kubeloop-token": b"anything"})
