"""Every operation in the server's own /openapi.json, fuzzed by schemathesis from the
schemas it publishes, with bodies that fit them (positive) and bodies that break them
(negative): never a 5xx, and the server still answers a good request after each case."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from fuzzing import fuzz, still_serves
from hypothesis import given
from schemathesis import GenerationMode

SERVER = "mixed"
PATH = "/v2/models/mixed/infer"
GOOD = b'{"inputs": [{"name": "age", "shape": [1], "datatype": "FP32", "data": [40.0]},'
GOOD += b' {"name": "income", "shape": [1], "datatype": "FP32", "data": [50.0]},'
GOOD += b' {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["rome"]}]}'


@pytest.fixture(scope="module")
def api_schema(mixed):
    return schemathesis.openapi.from_url(f"{mixed.url}/openapi.json")


def cases(operation, mode: GenerationMode):
    """The operation's cases; where the path names a model, also cases for the served
    one, so that bodies reach the decoders instead of stopping at the model lookup."""
    strategy = operation.as_strategy(mode)
    if "{name}" in operation.path:
        strategy |= operation.as_strategy(mode, path_parameters={"name": "mixed"})
    return strategy


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_5xx(api_schema, mixed, http, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    if mode is GenerationMode.NEGATIVE:  # what breaks a schema: a body that does not fit it
        operations = [op for op in operations if len(op.body)]
        assert len(operations) >= 4, [op.label for op in operations]
    with requests.Session() as session:
        for operation in operations:

            @fuzz(50)
            @given(case=cases(operation, mode))
            def check(case):
                response = case.call(base_url=mixed.url, session=session, timeout=30)
                assert response.status_code < 500, (case.as_curl_command(), response.text[:2000])
                if response.status_code >= 400:
                    assert isinstance(response.json()["error"], str), response.text[:2000]
                still_serves(http, PATH, GOOD)

            check()


def test_the_schema_lists_the_inference_routes(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v2/models/{name}/infer", "/v1/models/{name}:predict"} <= set(paths)
