"""One 2-D ``[n, 30]`` tensor of every feature under fuzzing, on the breast-cancer model:
JSON (flat or nested) and binary spellings of the same rows get the same answer; a
hostile value anywhere is a 400 naming the tensor; random binary never gets a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fuzzing import (
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
)
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.contracts.artifacts import LABEL_OUTPUT

SERVER = "cancer"
PATH = "/v2/models/cancer/infer"
F = 30
GOOD = dumps({"inputs": [{"name": "x", "shape": [1, F], "datatype": "FP32", "data": [1.0] * F}]})
matrices = st.integers(1, 6).flatmap(
    lambda n: st.lists(st.lists(numbers, min_size=F, max_size=F), min_size=n, max_size=n)
)


def labels(r):
    assert r.status_code == 200, r.text[:2000]
    end = int(r.headers.get("inference-header-content-length", len(r.content)))
    outputs = json.loads(r.content[:end])["outputs"]
    return next(o for o in outputs if o["name"] == LABEL_OUTPUT)["data"]


@fuzz(100)
@given(rows=matrices, nested=st.booleans(), datatype=st.sampled_from(["FP32", "FP64"]))
def test_json_and_binary_spellings_agree(http, rows, nested, datatype):
    n = len(rows)
    as32 = np.asarray(rows, dtype=np.float32)
    data = as32.tolist() if nested else as32.ravel().tolist()
    doc = {"inputs": [{"name": "x", "shape": [n, F], "datatype": datatype, "data": data}]}
    tensor = {"name": "x", "shape": [n, F], "datatype": "FP32",
              "parameters": {"binary_data_size": as32.nbytes}}  # fmt: skip
    wanted = {"name": LABEL_OUTPUT, "parameters": {"binary_data": False}}
    header = dumps({"inputs": [tensor], "outputs": [wanted]})
    binary = post(http, PATH, header + as32.tobytes(),
                  **{"inference-header-content-length": str(len(header))})  # fmt: skip
    assert labels(post(http, PATH, dumps(doc))) == labels(binary)


@fuzz(200)
@given(
    rows=matrices,
    at=st.integers(0, 6 * F),
    bad=not_numbers | huge_numbers | non_finite,
    name=st.sampled_from(["x", "input-0", "matrix"]),
)
def test_a_hostile_value_is_a_400_naming_the_tensor(http, rows, at, bad, name):
    n = len(rows)
    flat = [v for row in rows for v in row]
    flat[at % len(flat)] = bad
    doc = {"inputs": [{"name": name, "shape": [n, F], "datatype": "FP32", "data": flat}]}
    refused_naming(post(http, PATH, dumps(doc)), name)
    still_serves(http, PATH, GOOD)


@fuzz(200)
@given(
    n=st.integers(1, 4),
    raw=st.data(),
    datatype=st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]),
)
def test_random_binary_rows_decode_or_get_a_400(http, n, raw, datatype):
    size = n * F * {"FP64": 8, "INT64": 8, "BOOL": 1}.get(datatype, 4)
    blob = raw.draw(st.binary(min_size=size, max_size=size) | st.binary(max_size=size + 8))
    header = dumps({"inputs": [{"name": "x", "shape": [n, F], "datatype": datatype,
                                "parameters": {"binary_data_size": len(blob)}}]})  # fmt: skip
    r = post(http, PATH, header + blob, **{"inference-header-content-length": str(len(header))})
    no_server_error(r)
    still_serves(http, PATH, GOOD)


V1 = "/v1/models/cancer:predict"


@pytest.fixture(scope="module")
def features(http):
    return [i["name"] for i in http.get("/v2/models/cancer").json()["inputs"]]


@fuzz(100)
@given(rows=matrices)
def test_v1_rows_get_the_2d_tensor_answer(http, rows):
    """V1 rows of numbers (one vectorised pass) and the same rows as a V2 2-D tensor."""
    n = len(rows)
    doc = {"inputs": [{"name": "x", "shape": [n, F], "datatype": "FP64", "data": rows}]}
    r = post(http, V1, dumps({"instances": rows}))
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == labels(post(http, PATH, dumps(doc)))


@fuzz(200)
@given(rows=matrices, at=st.integers(0, 6 * F), bad=not_numbers | huge_numbers | non_finite)
def test_a_hostile_value_in_v1_rows_is_a_400_naming_its_feature(http, features, rows, at, bad):
    flat = at % (len(rows) * F)
    rows[flat // F][flat % F] = bad
    r = post(http, V1, dumps({"instances": rows}))
    refused_naming(r, features[flat % F])
    still_serves(http, V1, dumps({"instances": [[1.0] * F]}))
