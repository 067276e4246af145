"""Request metadata bounds: the id and the free-form ``parameters``, from the settings."""

from __future__ import annotations

import orjson
import pydantic
import pytest

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT
from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.limits import RequestLimits
from kubeloop.serving.rest.v2 import decode_feedback, decode_v2
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tensors import InputSpec

SPECS = [InputSpec("a", "FP32")]
INPUT = {"name": "a", "datatype": "FP32", "shape": [1], "data": [1.0]}


def decode(doc: dict[str, object], limits: RequestLimits | None = None):
    kw = {} if limits is None else {"limits": limits}
    return decode_v2(
        orjson.dumps(doc), SPECS, {"a": 0}, max_rows=10,
        output_names=[LABEL_OUTPUT, PROBA_OUTPUT], **kw,
    )  # fmt: skip


def nested(depth: int) -> dict[str, object]:
    """A parameters object ``depth`` levels deep (the object itself is level 1)."""
    doc: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"k": doc}
    return doc


def refused(doc: dict[str, object], message: str, limits: RequestLimits | None = None) -> None:
    with pytest.raises(BadRequestError, match=message) as err:
        decode(doc, limits)
    assert err.value.status_code == 400


def test_request_id_length():
    assert decode({"id": "x" * 256, "inputs": [INPUT]}).request_id == "x" * 256
    refused(
        {"id": "x" * 257, "inputs": [INPUT]},
        "'id' has 257 characters; at most 256 are allowed \\(KUBELOOP_SERVING_MAX_REQUEST_ID\\)",
    )
    refused({"id": "x" * 11, "inputs": [INPUT]}, "at most 10", RequestLimits(max_request_id=10))


def test_feedback_id_length():
    assert decode_feedback(orjson.dumps({"id": "x" * 256, "truth": 1})) == [("x" * 256, 1)]
    with pytest.raises(BadRequestError, match="feedback\\[0\\]: 'id' has 257 characters"):
        decode_feedback(orjson.dumps({"id": "x" * 257, "truth": 1}))


@pytest.mark.parametrize("where", ["request", "input", "output"])
def test_parameter_limits_apply_to_every_parameters_object(where):
    def doc(params: object) -> dict[str, object]:
        if where == "request":
            return {"inputs": [INPUT], "parameters": params}
        if where == "input":
            return {"inputs": [{**INPUT, "parameters": params}]}
        return {"inputs": [INPUT], "outputs": [{"name": LABEL_OUTPUT, "parameters": params}]}

    decode(doc({f"k{i}": i for i in range(64)}))
    decode(doc(nested(4)))
    decode(doc({"k": "x" * (64 * 1024 - 20)}))
    refused(doc({f"k{i}": i for i in range(65)}), "more than 64 keys .*MAX_PARAMETER_KEYS")
    refused(doc({"a": {f"k{i}": i for i in range(64)}}), "more than 64 keys")  # all levels
    refused(doc(nested(5)), "deeper than 4 levels .*MAX_PARAMETER_DEPTH")
    refused(doc({"k": [[[[1]]]]}), "deeper than 4 levels")  # lists nest too
    refused(doc({"k": "x" * 64 * 1024}), "at most 65536 are allowed .*MAX_PARAMETER_BYTES")


def test_the_limits_are_settings_with_checked_bounds(monkeypatch):
    monkeypatch.setenv("KUBELOOP_SERVING_MODEL", "/m")
    monkeypatch.setenv("KUBELOOP_SERVING_MAX_REQUEST_ID", "32")
    monkeypatch.setenv("KUBELOOP_SERVING_MAX_PARAMETER_DEPTH", "2")
    limits = ServingSettings().request_limits()
    assert limits == RequestLimits(max_request_id=32, max_parameter_depth=2)
    for name, value in [
        ("MAX_REQUEST_ID", "0"),
        ("MAX_REQUEST_ID", "5000"),
        ("MAX_PARAMETER_KEYS", "0"),
        ("MAX_PARAMETER_BYTES", "10"),
        ("MAX_PARAMETER_DEPTH", "33"),
    ]:
        monkeypatch.setenv(f"KUBELOOP_SERVING_{name}", value)
        with pytest.raises(pydantic.ValidationError):
            ServingSettings()
        monkeypatch.delenv(f"KUBELOOP_SERVING_{name}")


def test_defaults():
    settings = ServingSettings(model="/m")
    assert settings.request_limits() == RequestLimits()
    assert (settings.max_request_id, settings.max_parameter_keys) == (256, 64)
    assert (settings.max_parameter_bytes, settings.max_parameter_depth) == (65536, 4)
