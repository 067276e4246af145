"""Client mistakes get precise 4xx answers and never a 500; the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def body_for(rows, **overrides):
    row = rows.iloc[0]
    inputs = [
        {"name": n, "shape": [1], "datatype": "FP32", "data": [float(row[n])]} for n in rows.columns
    ]
    return {"inputs": inputs, **overrides}


@pytest.fixture(scope="module")
def http(cancer):
    with cancer.client() as c:
        yield c


def post(http, body, path="/v2/models/cancer/infer", **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers={"content-type": "application/json"}, **kw)


def first(rows):
    return rows.columns[0]


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("missing", 400, "missing input(s): {f0}"),
        ("extra", 400, "unknown input 'bogus'"),
        ("wrong_shape", 400, "input '{f0}' has shape [1, 2]"),
        ("wrong_count", 400, "input '{f0}' has 2 values; its shape says 1"),
        ("wrong_datatype", 400, "input '{f0}' has datatype BYTES; the model takes FP32"),
        ("string", 400, "input '{f0}' is FP32 but value 0 is 'abc', not a number"),
        ("nan", 400, "input '{f0}' is NaN at row 0"),
        ("bad_2d", 400, "a single input must be a 2-D [n, 30] tensor"),
    ],
)
def test_bad_tensors(http, cancer_rows, case, status, needle):
    f0 = first(cancer_rows)
    body = body_for(cancer_rows)
    inputs = body["inputs"]
    if case == "missing":
        del inputs[0]
    elif case == "extra":
        inputs.append({"name": "bogus", "shape": [1], "datatype": "FP32", "data": [1]})
    elif case == "wrong_shape":
        inputs[0].update(shape=[1, 2], data=[1, 2])
    elif case == "wrong_count":
        inputs[0].update(data=[1, 2])
    elif case == "wrong_datatype":
        inputs[0].update(datatype="BYTES", data=["x"])
    elif case == "string":
        inputs[0].update(data=["abc"])
    elif case == "nan":
        inputs[0].update(data=[float("nan")])
    elif case == "bad_2d":
        body["inputs"] = [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
    r = post(http, body)
    assert r.status_code == status, r.text
    assert r.json()["error"].find(needle.format(f0=f0)) >= 0, r.json()


def test_unknown_model_malformed_json_and_oversized_body(http, cancer_rows):
    r = post(http, body_for(cancer_rows), path="/v2/models/nope/infer")
    assert r.status_code == 404
    assert "unknown model 'nope'" in r.json()["error"]
    r = post(http, b'{"inputs": [')
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["error"]
    r = post(http, b"x" * (9 * 1024 * 1024))
    assert r.status_code == 413
    assert "over the limit" in r.json()["error"]
    r = post(http, {"instances": [[1, 2]]}, path="/v1/models/cancer:predict")
    assert r.status_code == 400
    assert "the model takes 30 features" in r.json()["error"]
    r = http.get("/v2/nothing-here")
    assert r.status_code == 404
    assert "error" in r.json()
    # and it still serves
    assert post(http, body_for(cancer_rows)).status_code == 200


def test_oversized_body_without_content_length_is_refused(cancer):
    def chunks():
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    with httpx.Client(base_url=cancer.url, timeout=30) as c:
        r = c.post("/v2/models/cancer/infer", content=chunks())
    assert r.status_code == 413


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.text(st.characters(categories=["Cs", "Ll"]), max_size=3)  # lone surrogates too
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["mean_radius", "worst_area", "x", ""]) | json_value,
        "shape": st.lists(st.integers(-1, 40), max_size=3) | json_value,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32"])
        | json_value,
        "data": st.lists(json_leaf, max_size=40) | json_value,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "x"]), json_leaf, max_size=2
        ),
    },
)
request = st.fixed_dictionaries(
    {},
    optional={
        "id": json_value,
        "inputs": st.lists(tensor, max_size=4) | json_value,
        "outputs": st.lists(st.fixed_dictionaries({"name": json_value}), max_size=2) | json_value,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_leaf),
        "instances": st.lists(st.lists(json_leaf, max_size=31) | json_value, max_size=3),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    doc=request | json_value,
    path=st.sampled_from(
        [
            "/v2/models/cancer/infer",
            "/v1/models/cancer:predict",
            "/v2/models/cancer/feedback",
            "/v2/models/cancer/versions/x/infer",
        ]
    ),
    header=st.none() | st.integers(-5, 500).map(str) | st.just("abc"),
)
def test_fuzzed_requests_never_get_a_500(http, doc, path, header):
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["inference-header-content-length"] = header
    r = http.post(path, content=json.dumps(doc).encode(), headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str)


def test_server_is_still_healthy_after_the_fuzzing(http, cancer_rows):
    assert http.get("/v2/health/ready").status_code == 200
    assert post(http, body_for(cancer_rows)).status_code == 200
