"""Decoding and validation of OIP v2 / KServe V1 requests; encoding of responses."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT
from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.rest.v1 import decode_v1, encode_v1
from kubeloop.serving.rest.v2 import decode_v2, encode_v2
from kubeloop.serving.tensors import Decoded, InputSpec, OutputSpec

SPECS = [
    InputSpec("age", "FP32"),
    InputSpec("income", "FP64", nullable=True),
    InputSpec("city", "BYTES"),
    InputSpec("n", "INT64"),
]
INDEX = {s.name: i for i, s in enumerate(SPECS)}
NUMERIC = [InputSpec(f"f{i}", "FP32") for i in range(3)]
NUMERIC_INDEX = {s.name: i for i, s in enumerate(NUMERIC)}


def v2(inputs, **extra):
    return orjson.dumps({"inputs": inputs, **extra})


def col(name, datatype, data, shape=None):
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


GOOD = [
    col("age", "FP32", [30.5, 41]),
    col("income", "FP64", [1000.0, 2000]),
    col("city", "BYTES", ["paris", "rome"]),
    col("n", "INT64", [1, 2]),
]


def decode(body, specs=SPECS, index=INDEX, **kw):
    kw.setdefault("max_rows", 100)
    kw.setdefault("output_names", [LABEL_OUTPUT, PROBA_OUTPUT])
    return decode_v2(body, specs, index, **kw)


def test_columns_in_model_order_whatever_the_request_order():
    d = decode(v2(list(reversed(GOOD)), id="r1"))
    assert d.rows == 2
    assert d.request_id == "r1"
    assert d.columns[0].tolist() == [30.5, 41]
    assert d.columns[2].tolist() == ["paris", "rome"]
    assert d.columns[3].tolist() == [1, 2]


def test_nested_data_and_n_by_1_shapes_are_accepted():
    inputs = [dict(c, shape=[2, 1], data=[[v] for v in c["data"]]) for c in GOOD]
    d = decode(v2(inputs))
    assert d.columns[1].tolist() == [1000.0, 2000.0]


def test_one_2d_tensor_for_all_numeric_features():
    body = v2(
        [{"name": "input-0", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]
    )
    d = decode(body, NUMERIC, NUMERIC_INDEX)
    assert [c.tolist() for c in d.columns] == [[1, 4], [2, 5], [3, 6]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda i: i[:3], "missing input(s): n"),
        (lambda i: [*i, col("extra", "FP32", [1, 2])], "unknown input 'extra'"),
        (lambda i: [*i, i[0]], "input 'age' is given more than once"),
        (lambda i: [col("age", "BYTES", ["a", "b"]), *i[1:]], "input 'age' has datatype BYTES"),
        (lambda i: [col("age", "FP16", [1, 2]), *i[1:]], "input 'age' has datatype 'FP16'"),
        (
            lambda i: [col("age", "FP32", [1, "x"]), *i[1:]],
            "input 'age' is FP32 but value 1 is 'x'",
        ),
        (lambda i: [col("age", "FP32", [1, None]), *i[1:]], "value 1 is null"),
        (lambda i: [col("age", "FP32", [1, 2, 3], [2]), *i[1:]], "input 'age' has 3 values"),
        (lambda i: [col("age", "FP32", [1, 2], [2, 2]), *i[1:]], "input 'age' has shape [2, 2]"),
        (lambda i: [col("age", "FP32", [1]), *i[1:]], "input 'income' has 2 rows but earlier"),
        (lambda i: [*i[:3], col("n", "INT64", [1, 2.5])], "input 'n' is INT64 but value 1 is 2.5"),
        (
            lambda i: [*i[:2], col("city", "BYTES", ["a", 3]), i[3]],
            "input 'city' is BYTES but value 1",
        ),
        (lambda i: [dict(i[0], shape="x"), *i[1:]], "input 'age' needs a 'shape'"),
        (
            lambda i: [{k: v for k, v in i[0].items() if k != "data"}, *i[1:]],
            "input 'age' has no 'data'",
        ),
        (lambda i: [col("age", "FP32", [], [0]), *i[1:]], "input 'age' has no rows"),
    ],
)
def test_bad_inputs_are_named(mutate, message):
    with pytest.raises(BadRequestError) as err:
        decode(v2(mutate(list(GOOD))))
    assert message in err.value.message
    assert err.value.status_code == 400


def test_nan_is_refused_unless_the_feature_is_nullable():
    # Python's json writes NaN literals (so does tritonclient); they reach validation
    body = json.dumps({"inputs": [col("age", "FP32", [float("nan"), 1.0]), *GOOD[1:]]}).encode()
    with pytest.raises(BadRequestError, match="input 'age' is NaN at row 0"):
        decode(body)
    ok = json.dumps({"inputs": [GOOD[0], col("income", "FP64", [float("nan"), 1.0]), *GOOD[2:]]})
    assert np.isnan(decode(ok.encode()).columns[1][0])
    inf = json.dumps({"inputs": [GOOD[0], col("income", "FP64", [float("inf"), 1.0]), *GOOD[2:]]})
    with pytest.raises(BadRequestError, match="'income' is infinite at row 0"):
        decode(inf.encode())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [1]}', "inputs[0] must be an object"),
        (b'{"inputs": [{"datatype": "FP32"}]}', "has no 'name'"),
        (b'{"id": 5, "inputs": [{"name": "age"}]}', "'id' must be a string"),
    ],
)
def test_malformed_requests(body, message):
    with pytest.raises(BadRequestError, match=re.escape(message)):
        decode(body)


def test_too_many_rows():
    body = v2([{"name": "x", "datatype": "FP32", "shape": [200, 3], "data": [0.0] * 600}])
    with pytest.raises(BadRequestError, match="200 rows; at most 100"):
        decode(body, NUMERIC, NUMERIC_INDEX)


def test_unknown_requested_output():
    with pytest.raises(BadRequestError, match="unknown output 'nope'"):
        decode(v2(GOOD, outputs=[{"name": "nope"}]))


def test_binary_tensor_extension():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "age",
                    "datatype": "FP32",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": 8},
                },
                col("income", "FP64", [1.0, 2.0]),
                {
                    "name": "city",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 13},
                },
                col("n", "INT64", [1, 2]),
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    blob = np.array([1.5, 2.5], dtype="<f4").tobytes()
    blob += struct.pack("<I", 5) + b"paris" + struct.pack("<I", 0)
    d = decode(header + blob, header_length=len(header))
    assert d.columns[0].tolist() == [1.5, 2.5]
    assert d.columns[2].tolist() == ["paris", ""]
    assert d.binary_default is True
    with pytest.raises(BadRequestError, match="belong to no input"):
        decode(header + blob + b"x", header_length=len(header))
    with pytest.raises(BadRequestError, match="outside the body"):
        decode(header, header_length=len(header) + 5)


def test_v2_response_json_and_binary():
    outs = [
        (OutputSpec(LABEL_OUTPUT, "INT64", (-1,)), np.array([0, 1], dtype=np.int64)),
        (
            OutputSpec(PROBA_OUTPUT, "FP32", (-1, 2)),
            np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32),
        ),
    ]
    body, hl = encode_v2("m", "1", "r", outs, Decoded([], 2))
    assert hl is None
    doc = orjson.loads(body)
    assert doc["id"] == "r"
    assert doc["outputs"][0] == {
        "name": LABEL_OUTPUT,
        "datatype": "INT64",
        "shape": [2],
        "data": [0, 1],
    }
    assert doc["outputs"][1]["shape"] == [2, 2]
    assert doc["outputs"][1]["data"] == pytest.approx([0.9, 0.1, 0.2, 0.8])
    body, hl = encode_v2(
        "m", "1", "r", outs, Decoded([], 2, outputs=[LABEL_OUTPUT], binary={LABEL_OUTPUT: True})
    )
    header = orjson.loads(body[:hl])
    assert header["outputs"] == [
        {
            "name": LABEL_OUTPUT,
            "datatype": "INT64",
            "shape": [2],
            "parameters": {"binary_data_size": 16},
        }
    ]
    assert np.frombuffer(body[hl:], dtype="<i8").tolist() == [0, 1]


def test_v1_rows_and_records():
    specs = [InputSpec("a", "FP32"), InputSpec("b", "BYTES")]
    index = {"a": 0, "b": 1}
    rows = decode_v1(b'{"instances": [[1, "x"], [2, "y"]]}', specs, index, max_rows=10)
    records = decode_v1(
        b'{"instances": [{"b": "x", "a": 1}, {"a": 2, "b": "y"}]}', specs, index, max_rows=10
    )
    for d in (rows, records):
        assert d.rows == 2
        assert d.columns[0].tolist() == [1, 2]
        assert d.columns[1].tolist() == ["x", "y"]
    for body, message in [
        (b'{"instances": [[1]]}', "instances\\[0\\] has 1 values; the model takes 2"),
        (b'{"instances": [{"a": 1}]}', "missing feature\\(s\\) b"),
        (b'{"instances": [{"a": 1, "b": "x", "c": 2}]}', "unknown feature\\(s\\) c"),
        (b'{"instances": [["x", "x"]]}', "feature 'a' is a number but row 0 is 'x'"),
        (b'{"instances": [[null, "x"]]}', "feature 'a' is missing \\(null\\) at row 0"),
        (b'{"rows": []}', "'instances' must be"),
        (b'{"instances": [3]}', "rows \\(lists\\) or records"),
    ]:
        with pytest.raises(BadRequestError, match=message):
            decode_v1(body, specs, index, max_rows=10)


def test_v1_rows_of_numbers_decode_in_one_pass_to_the_same_columns():
    """Float-only models take V1 rows of plain numbers as one 2-D array (like a V2 2-D
    tensor): the columns equal the per-column path's (records of the same values)."""
    body = b'{"instances": [[1, 2.5, 3], [4, 5, 6.25]]}'
    rows = decode_v1(body, NUMERIC, NUMERIC_INDEX, max_rows=10)
    assert rows.matrix is not None
    assert rows.matrix.shape == (2, 3)
    records = decode_v1(
        b'{"instances": [{"f0": 1, "f1": 2.5, "f2": 3}, {"f0": 4, "f1": 5, "f2": 6.25}]}',
        NUMERIC, NUMERIC_INDEX, max_rows=10,
    )  # fmt: skip
    assert records.matrix is None
    for a, b in zip(rows.columns, records.columns, strict=True):
        assert a.tolist() == b.tolist()


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ("[[1, 2, NaN]]", "input 'f2' is NaN at row 0"),
        ("[[1, 2, 3], [1e39, 2, 3]]", "input 'f0' is 1e+39 at row 1, outside the range of FP32"),
        ("[[1, 2, -Infinity]]", "input 'f2' is infinite at row 0"),
        ("[[1, 2, true]]", "feature 'f2' is a number but row 0 is true"),
        ("[[1, 2, 3], [1, 2]]", "instances[1] has 2 values; the model takes 3"),
        ("[[1, 2, [3]]]", "feature 'f2' is a number but row 0 is [3]"),
        ("[[1, 2, " + str(10**400) + "]]", "outside the range of FP32"),
        ('[[1, 2, "3"]]', "feature 'f2' is a number but row 0 is '3'"),
    ],
)
def test_v1_rows_of_numbers_still_name_each_bad_value(instances, message):
    with pytest.raises(BadRequestError, match=re.escape(message)):
        decode_v1(f'{{"instances": {instances}}}'.encode(), NUMERIC, NUMERIC_INDEX, max_rows=10)


def test_v1_rows_for_a_nullable_float_keep_nan_as_missing():
    specs = [InputSpec("a", "FP32"), InputSpec("b", "FP64", nullable=True)]
    d = decode_v1(b'{"instances": [[1, NaN], [2, 3]]}', specs, {"a": 0, "b": 1}, max_rows=10)
    assert np.isnan(d.columns[1][0])
    assert d.columns[1][1] == 3


def test_v1_response():
    doc = orjson.loads(encode_v1(np.array([[1.5], [2.5]], dtype=np.float32), None))
    assert doc == {"predictions": [1.5, 2.5]}
    doc = orjson.loads(encode_v1(np.array(["a", "b"], dtype=object), np.array([[0.6, 0.4]])))
    assert doc["predictions"] == ["a", "b"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.text(st.characters(categories=["Cs", "Ll"]), max_size=3),  # lone surrogates too
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(["age", "income", "city", "n", "zz"]) | json_values,
                "datatype": st.sampled_from(
                    ["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "X"]
                ),
                "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
                "data": json_values,
                "parameters": json_values,
            },
        )
        | json_values,
        max_size=5,
    ),
    extra=st.dictionaries(st.sampled_from(["id", "outputs", "parameters"]), json_values),
)
def test_fuzzed_requests_either_decode_or_raise_a_client_error(inputs, extra):
    body = json.dumps({"inputs": inputs, **extra}).encode()
    try:
        d = decode(body)
    except BadRequestError as exc:
        message = exc.message
        d = None
    if d is None:
        assert message
        return
    assert len(d.columns) == len(SPECS)
    assert all(len(c) == d.rows for c in d.columns)
