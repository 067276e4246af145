"""V2 (``/v2/models/{name}/infer``) under fuzzing, on the mixed model (a float, a
nullable float and a string feature): well-formed requests in every legal spelling get
the same answer as V1; a hostile value is a 400 naming its input; broken structure,
giant metadata and binary BYTES tensors never get a 5xx; the server serves on."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from fuzzing import (
    FP32_MAX,
    any_json,
    dumps,
    fuzz,
    huge_numbers,
    no_server_error,
    non_finite,
    not_numbers,
    numbers,
    post,
    refused_naming,
    still_serves,
    surrogates,
    texts,
)
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT

SERVER = "mixed"
PATH = "/v2/models/mixed/infer"
V1 = "/v1/models/mixed:predict"
GOOD = dumps({"inputs": [
    {"name": "age", "shape": [1], "datatype": "FP32", "data": [40.0]},
    {"name": "income", "shape": [1], "datatype": "FP32", "data": [50.0]},
    {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["rome"]},
]})  # fmt: skip
FEATURES = ("age", "income", "city")

rows = st.lists(
    st.fixed_dictionaries(
        {
            "age": numbers,
            "income": numbers | st.just(math.nan),
            "city": st.sampled_from(["paris", "rome", "oslo"]) | texts,
        }
    ),
    min_size=1,
    max_size=8,
)


@st.composite
def tensor(draw: st.DrawFn, name: str, values: list[Any]) -> dict[str, Any]:
    """One input in any legal spelling: datatype, [n] or [n, 1], flat or nested data."""
    n = len(values)
    if name == "city":
        datatype = "BYTES"
    elif all(isinstance(v, int) for v in values):
        datatype = draw(st.sampled_from(["FP32", "FP64", "INT64", "INT32"]))
    else:
        datatype = draw(st.sampled_from(["FP32", "FP64"]))
    column = draw(st.booleans())
    nested = column and draw(st.booleans())
    data = [[v] for v in values] if nested else list(values)
    return {"name": name, "datatype": datatype, "shape": [n, 1] if column else [n], "data": data}


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A well-formed request (inputs in any order, optional id and outputs) and its rows."""
    table = draw(rows)
    inputs = [draw(tensor(f, [r[f] for r in table])) for f in FEATURES]
    doc: dict[str, Any] = {"inputs": draw(st.permutations(inputs))}
    if draw(st.booleans()):
        doc["id"] = draw(texts)
    if draw(st.booleans()):
        doc["outputs"] = [{"name": LABEL_OUTPUT}, {"name": PROBA_OUTPUT}]
    return doc, table


def test_the_model_takes_what_the_cases_assume(http):
    meta = http.get("/v2/models/mixed").json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("age", "FP32"),
        ("income", "FP32"),
        ("city", "BYTES"),
    ]


@fuzz(100)
@given(case=requests())
def test_well_formed_requests_get_the_v1_answer(http, case):
    doc, table = case
    r = post(http, PATH, dumps(doc))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    labels = outputs[LABEL_OUTPUT]["data"]
    probs = np.asarray(outputs[PROBA_OUTPUT]["data"]).reshape(outputs[PROBA_OUTPUT]["shape"])
    assert len(labels) == len(table)
    assert probs.shape == (len(table), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    records = [{**row, "income": None if math.isnan(row["income"]) else row["income"]}
               for row in table]  # fmt: skip
    v1 = post(http, V1, dumps({"instances": records}))
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == labels
    np.testing.assert_allclose(v1.json()["probabilities"], probs, rtol=1e-6)


def hostile(name: str) -> st.SearchStrategy[Any]:
    """Values the input cannot take: for a number, anything but a finite FP32 (NaN is the
    nullable income's missing value); for the string, anything but a string."""
    if name == "city":
        return numbers | not_numbers.filter(lambda v: not isinstance(v, str)) | non_finite
    nan_ok = name == "income"
    return not_numbers | huge_numbers | non_finite.filter(lambda v: not (nan_ok and math.isnan(v)))


#: values the model's FP32 input could take but the tensor's declared datatype cannot hold
DECLARED_OVERFLOW = {
    "INT32": st.integers(2**31, 2**62) | st.integers(-(2**62), -(2**31) - 1),
}


@fuzz(300)
@given(case=requests(), name=st.sampled_from(FEATURES), at=st.integers(0, 7), data=st.data())
def test_a_hostile_value_is_a_400_naming_its_input(http, case, name, at, data):
    doc, table = case
    tensor = next(t for t in doc["inputs"] if t["name"] == name)
    declared = DECLARED_OVERFLOW.get(tensor["datatype"], st.nothing())
    bad = data.draw(hostile(name) | surrogates | declared, label="bad")
    row = at % len(table)
    if isinstance(tensor["data"][row], list):
        tensor["data"][row][0] = bad
    else:
        tensor["data"][row] = bad
    r = post(http, PATH, dumps(doc))
    if isinstance(bad, str) and name != "city":  # a string is no number; a surrogate no text
        assert r.status_code == 400, r.text
    elif isinstance(bad, str):
        assert "surrogate" in r.json()["error"], r.text
    else:
        refused_naming(r, name)
    still_serves(http, PATH, GOOD)


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


MUTATIONS = {
    "shape": st.lists(st.integers(-3, 2**70) | st.integers(0, 10), max_size=4) | any_json,
    "datatype": st.sampled_from(["fp32", "UINT8", "FP16", "STRING", "", "BOOL"]) | any_json,
    "name": texts | st.integers(1, 10**5).map(lambda n: "z" * n) | any_json,
    "data": any_json,
    "parameters": any_json
    | st.integers(1, 200).map(deep)
    | st.dictionaries(texts, st.integers(), min_size=1, max_size=200)
    | st.fixed_dictionaries({"binary_data_size": st.integers(-5, 2**64) | any_json}),
}
TOP = {
    "id": any_json | st.integers(1, 200_000).map(lambda n: "i" * n),
    "outputs": any_json
    | st.lists(st.fixed_dictionaries({"name": texts | any_json}), max_size=3)
    | st.just([{"name": LABEL_OUTPUT, "parameters": {"binary_data": "yes"}}]),
    "parameters": any_json
    | st.integers(1, 200).map(deep)
    | st.just({"binary_data_output": 1})
    | st.just({"x": "p" * 300_000}),
    "inputs": any_json,
}


#: ``x-request-id`` header values: printable ASCII (what HTTP carries; without leading or
#: trailing blanks, which are not part of a field value and which h11 will not send), up to
#: giant
header_ids = (
    st.none()
    | st.text(st.characters(min_codepoint=32, max_codepoint=126)).map(str.strip)
    | (st.integers(1, 60_000).map(lambda n: "h" * n))
)


@fuzz(500)
@given(case=requests(), request_id=header_ids, data=st.data())
def test_broken_structure_and_giant_metadata_never_get_a_5xx(http, case, request_id, data):
    doc, _ = case
    if data.draw(st.booleans(), label="top"):
        key = data.draw(st.sampled_from(sorted(TOP)), label="key")
        doc[key] = data.draw(TOP[key], label="value")
    else:
        where = data.draw(st.integers(0, 2), label="input")
        key = data.draw(st.sampled_from(sorted(MUTATIONS)), label="key")
        doc["inputs"][where][key] = data.draw(MUTATIONS[key], label="value")
        if data.draw(st.booleans(), label="duplicate"):
            doc["inputs"].append(doc["inputs"][where])
    headers = {} if request_id is None else {"x-request-id": request_id}
    r = post(http, PATH, dumps(doc), **headers)
    no_server_error(r)
    still_serves(http, PATH, GOOD)


def length_prefixed(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


@fuzz(200)
@given(
    case=requests(),
    blob=st.none() | st.binary(max_size=64),
    size_delta=st.sampled_from([0, 0, 0, -1, 1, 10**6]),
    header_delta=st.sampled_from([0, 0, 0, -1, 1, -(10**6)]),
)
def test_binary_bytes_tensors_decode_or_get_a_400(http, case, blob, size_delta, header_delta):
    """``city`` sent in the binary extension: well-formed length-prefixed UTF-8 is
    answered; random bytes, a wrong size or a wrong header length are client errors."""
    doc, table = case
    city = next(t for t in doc["inputs"] if t["name"] == "city")
    raw = length_prefixed([r["city"] for r in table]) if blob is None else blob
    del city["data"]
    city["parameters"] = {"binary_data_size": max(0, len(raw) + size_delta)}
    header = dumps(doc)
    r = post(http, PATH, header + raw,
             **{"inference-header-content-length": str(len(header) + header_delta)})  # fmt: skip
    no_server_error(r)
    if blob is None and size_delta == 0 and header_delta == 0:
        assert r.status_code == 200, r.text
    still_serves(http, PATH, GOOD)


def test_fp32_limits_hold_at_the_edge(http):
    """The largest float32 is a value; the next double beyond it is not."""
    for value, status in ((FP32_MAX, 200), (FP32_MAX * (1 + 2**-52), 400)):
        body = GOOD.replace(b"[40.0]", f"[{value!r}]".encode())
        assert post(http, PATH, body).status_code == status
