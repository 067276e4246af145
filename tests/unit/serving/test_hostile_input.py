"""Hostile values are client errors at decode time: lone surrogates anywhere, nested
values where a number belongs, and numbers the input's datatype cannot hold."""

from __future__ import annotations

import re
import struct

import numpy as np
import orjson
import pytest

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT
from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.rest.reply import error_reply
from kubeloop.serving.rest.v1 import decode_v1
from kubeloop.serving.rest.v2 import decode_v2
from kubeloop.serving.tensors import InputSpec

SPECS = [
    InputSpec("age", "FP32"),
    InputSpec("income", "FP64", nullable=True),
    InputSpec("city", "BYTES"),
    InputSpec("n", "INT32"),
]
INDEX = {s.name: i for i, s in enumerate(SPECS)}
NUMERIC = [InputSpec(f"f{i}", "FP32") for i in range(2)]


def decode(body: bytes, specs=SPECS, **kw):
    index = {s.name: i for i, s in enumerate(specs)}
    kw.setdefault("max_rows", 100)
    kw.setdefault("output_names", [LABEL_OUTPUT, PROBA_OUTPUT])
    return decode_v2(body, specs, index, **kw)


def request(age="30.5", income="1000.0", city='"paris"', n="3", name="age", rid='"r1"'):
    """A V2 request spelled by hand, so each value can be any JSON text."""
    return (
        f'{{"id": {rid}, "inputs": ['
        f'{{"name": "{name}", "datatype": "FP64", "shape": [1], "data": [{age}]}},'
        f'{{"name": "income", "datatype": "FP64", "shape": [1], "data": [{income}]}},'
        f'{{"name": "city", "datatype": "BYTES", "shape": [1], "data": [{city}]}},'
        f'{{"name": "n", "datatype": "INT64", "shape": [1], "data": [{n}]}}]}}'
    ).encode()


def refused(body: bytes, message: str, **kw) -> None:
    with pytest.raises(BadRequestError, match=re.escape(message)) as err:
        decode(body, **kw)
    assert err.value.status_code == 400
    orjson.dumps({"error": err.value.message})  # the answer encodes


def test_the_hand_written_request_decodes():
    d = decode(request())
    assert d.request_id == "r1"
    assert d.columns[2].tolist() == ["paris"]


@pytest.mark.parametrize("nan", ["30.5", "NaN"])  # NaN: the stdlib parser's path
@pytest.mark.parametrize(
    "field",
    [
        {"city": '"\\ud800"'},
        {"city": '"ok\\udfff"'},
        {"rid": '"\\udc00"'},
        {"name": "\\ud800"},
    ],
)
def test_lone_surrogates_are_refused_wherever_they_are(field, nan):
    refused(request(income=nan, **field), "lone UTF-16 surrogate")


def test_a_surrogate_pair_is_a_character():
    assert decode(request(city='"\\ud83d\\ude00"')).columns[2].tolist() == ["\U0001f600"]


def test_v1_surrogates_are_refused():
    specs, index = [InputSpec("a", "FP32"), InputSpec("b", "BYTES")], {"a": 0, "b": 1}
    for body in (b'{"instances": [[NaN, "\\ud800"]]}', b'{"instances": [{"a": 1, "\\ud800": 1}]}'):
        with pytest.raises(BadRequestError, match="lone UTF-16 surrogate"):
            decode_v1(body, specs, index, max_rows=10)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"age": "1e300"}, "input 'age' is 1e+300 at row 0, outside the range of FP32"),
        ({"age": "-1e39"}, "outside the range of FP32"),
        ({"age": "1" + "0" * 39}, "outside the range of FP32"),
        ({"n": str(2**31)}, "input 'n' is 2147483648 at row 0, outside the range of INT32"),
        ({"n": str(-(2**31) - 1)}, "outside the range of INT32"),
        (
            {"n": str(2**64)},
            "input 'n' value 0 is 1.8446744073709552e+19, outside the range of INT64",
        ),
        ({"n": str(10**30), "income": "NaN"}, "outside the range of INT64"),
        ({"age": "Infinity"}, "input 'age' is infinite at row 0"),
        ({"age": "NaN"}, "input 'age' is NaN at row 0; this feature does not allow missing"),
        ({"age": "null"}, "input 'age' is FP64 but value 0 is null, not a number"),
        ({"age": '{"a": 1}'}, "not a number"),
    ],
)
def test_numbers_the_datatype_cannot_hold_are_refused(field, message):
    refused(request(**field), message)


def test_the_range_edges_are_accepted():
    d = decode(request(age="3.4e38", income="1e300", n=str(2**31 - 1)))
    assert d.columns[0][0] == 3.4e38
    assert d.columns[3][0] == 2**31 - 1
    assert np.isnan(decode(request(income="NaN")).columns[1][0])  # nullable: NaN is missing


def test_int64_range():
    specs = [InputSpec("n", "INT64")]
    body = orjson.dumps({"inputs": [{"name": "n", "datatype": "INT64", "shape": [2],
                                     "data": [2**63 - 1, 2**63]}]})  # fmt: skip
    refused(
        body, "input 'n' value 1 is 9223372036854775808, outside the range of INT64", specs=specs
    )


def test_2d_tensor_and_binary_values_are_range_checked():
    matrix = (
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 3, 1e39]}]}'
    )
    refused(
        matrix, "input 'x[:, 1] (f1)' is 1e+39 at row 1, outside the range of FP32", specs=NUMERIC
    )
    header = orjson.dumps({"inputs": [
        {"name": "age", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
        {"name": "income", "datatype": "FP64", "shape": [1], "data": [1.0]},
        {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["x"]},
        {"name": "n", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ]})  # fmt: skip
    body = header + struct.pack("<d", 1e300) + struct.pack("<q", 1)
    refused(
        body, "input 'age' is 1e+300 at row 0, outside the range of FP32", header_length=len(header)
    )
    body = header + struct.pack("<d", 1.0) + struct.pack("<q", 2**40)
    refused(
        body,
        "input 'n' is 1099511627776 at row 0, outside the range of INT32",
        header_length=len(header),
    )


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ('[[[1, 2], "x"]]', "feature 'a' is a number but row 0 is [1, 2]"),
        ('[[[1, 2], "x"], [[3, 4], "y"]]', "feature 'a' is a number but row 0 is [1, 2]"),
        ('[[1, "x"], [[3], "y"]]', "feature 'a' is a number but row 1 is [3]"),
        ('[{"a": {"b": 1}, "b": "x"}]', "feature 'a' is a number but row 0 is {'b': 1}"),
        ('[{"a": [], "b": "x"}]', "feature 'a' is a number but row 0 is []"),
        ('[[1e300, "x"]]', "input 'a' is 1e+300 at row 0, outside the range of FP32"),
        ("[[" + "1" + "0" * 39 + ', "x"]]', "outside the range of FP32"),
        ('[[Infinity, "x"]]', "input 'a' is infinite at row 0"),
        ('[[1, ["x"]]]', "feature 'b' is a string but row 0 is ['x']"),
    ],
)
def test_v1_nested_and_out_of_range_values_are_refused(instances, message):
    specs, index = [InputSpec("a", "FP32"), InputSpec("b", "BYTES")], {"a": 0, "b": 1}
    with pytest.raises(BadRequestError, match=re.escape(message)):
        decode_v1(f'{{"instances": {instances}}}'.encode(), specs, index, max_rows=10)


def test_v1_integer_range():
    specs, index = [InputSpec("k", "INT32")], {"k": 0}
    with pytest.raises(BadRequestError, match="outside the range of INT32"):
        decode_v1(b'{"instances": [[4294967296]]}', specs, index, max_rows=10)
    with pytest.raises(BadRequestError, match="outside the range of INT32"):
        decode_v1(f'{{"instances": [[{10**30}], [NaN]]}}'.encode(), specs, index, max_rows=10)


def test_an_error_message_that_is_not_unicode_still_encodes():
    reply = error_reply(BadRequestError("unknown input '\ud800'"))
    assert reply.status == 400
    assert orjson.loads(reply.body) == {"error": "unknown input '\\ud800'"}


def test_unknown_names_are_quoted_cut_short():
    long = "z" * 100_000
    for body in (
        request(name=long),
        orjson.dumps(
            {"inputs": [{"name": long, "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
        ),
        request().replace(b'"inputs"', f'"outputs": [{{"name": "{long}"}}], "inputs"'.encode()),
    ):
        with pytest.raises(BadRequestError, match="'zzz") as err:
            decode(body)
        assert len(err.value.message) < 300


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"age": "true"}, "input 'age' is FP64 but value 0 is true, not a number"),
        ({"income": "false"}, "input 'income' is FP64 but value 0 is false, not a number"),
        ({"n": "true"}, "input 'n' is INT64 but value 0 is true, not a number"),
    ],
)
def test_a_json_boolean_is_not_a_number(field, message):
    refused(request(**field), message)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[1.5, true]", "input 'f0' is FP32 but value 1 is true, not a number"),
        ("[1, false]", "input 'f0' is FP32 but value 1 is false, not a number"),
        ("[[1], [true]]", "input 'f0' is FP32 but value 1 is true, not a number"),
        ("[true, 2]", "input 'f0' is FP32 but value 0 is true, not a number"),
    ],
)
def test_booleans_mixed_into_a_numeric_column_are_refused(data, message):
    f0 = b'{"name": "f0", "datatype": "FP32", "shape": [2], "data": ' + data.encode() + b"}"
    f1 = b'{"name": "f1", "datatype": "FP32", "shape": [2], "data": [1, 2]}'
    refused(b'{"inputs": [' + f0 + b", " + f1 + b"]}", message, specs=NUMERIC)


def test_booleans_in_a_2d_tensor_are_refused():
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, true]}]}'
    )
    refused(body, "input 'x' is FP32 but value 3 is true, not a number", specs=NUMERIC)


def test_a_bool_input_takes_only_booleans():
    specs = [InputSpec("flag", "BOOL")]
    ok = b'{"inputs": [{"name": "flag", "datatype": "BOOL", "shape": [2], "data": [true, false]}]}'
    assert decode(ok, specs=specs).columns[0].tolist() == [True, False]
    refused(ok.replace(b"false", b"0"), "input 'flag' is BOOL but value 1 is 0, not true/false",
            specs=specs)  # fmt: skip
    with pytest.raises(BadRequestError, match="feature 'flag' is true/false but row 1 is 1"):
        decode_v1(b'{"instances": [[true], [1]]}', specs, {"flag": 0}, max_rows=10)


def test_a_string_holding_true_is_no_boolean():
    """The byte search only gates the scan: a BYTES value spelled "true" is a string."""
    d = decode(request(city='"true"'))
    assert d.columns[2].tolist() == ["true"]


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ('[[true, "x"]]', "feature 'a' is a number but row 0 is true"),
        ('[[1.5, "x"], [false, "y"]]', "feature 'a' is a number but row 1 is false"),
        (
            '[{"a": 2, "b": "x"}, {"a": true, "b": "y"}]',
            "feature 'a' is a number but row 1 is true",
        ),
    ],
)
def test_v1_booleans_in_a_numeric_feature_are_refused(instances, message):
    specs, index = [InputSpec("a", "FP32"), InputSpec("b", "BYTES")], {"a": 0, "b": 1}
    with pytest.raises(BadRequestError, match=re.escape(message)):
        decode_v1(f'{{"instances": {instances}}}'.encode(), specs, index, max_rows=10)


def test_a_value_the_declared_datatype_cannot_hold_is_refused():
    """A tensor declared INT32 or FP32 must hold values of that type, even when the model's
    input takes wider ones: its binary form could not carry them."""

    def body(datatype, value, name="f0"):
        tensor = {"name": name, "datatype": datatype, "shape": [1], "data": [value]}
        other = {"name": "f1", "datatype": "FP32", "shape": [1], "data": [1.0]}
        return orjson.dumps({"inputs": [tensor, other]})

    refused(
        body("INT32", 2**31),
        "input 'f0' is 2147483648 at row 0, outside the range of INT32",
        specs=NUMERIC,
    )
    assert decode(body("INT32", 2**31 - 1), specs=NUMERIC).columns[0][0] == 2**31 - 1
    wide = [InputSpec("f0", "FP64", nullable=True), InputSpec("f1", "FP32")]
    refused(body("FP32", 1e300), "input 'f0' is 1e+300 at row 0, outside the range of FP32",
            specs=wide)  # fmt: skip
    assert decode(body("FP64", 1e300), specs=wide).columns[0][0] == 1e300
    nan = body("FP32", 0.0).replace(b"[0.0]", b"[NaN]")
    assert np.isnan(decode(nan, specs=wide).columns[0][0])  # still the nullable's missing value
    matrix = orjson.dumps({"inputs": [
        {"name": "x", "datatype": "INT32", "shape": [1, 2], "data": [1, 2**40]},
    ]})  # fmt: skip
    refused(matrix, "input 'x[:, 1] (f1)' is 1099511627776 at row 0, outside the range of INT32",
            specs=NUMERIC)  # fmt: skip
