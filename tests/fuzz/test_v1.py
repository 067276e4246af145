"""V1 (``/v1/models/{name}:predict``) under fuzzing, on the mixed model: rows and
records in any order get one prediction each; a hostile value is a 400 naming its
feature; broken structure never gets a 5xx; the server serves on."""

from __future__ import annotations

import math
from typing import Any

from fuzzing import (
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

SERVER = "mixed"
PATH = "/v1/models/mixed:predict"
GOOD = dumps({"instances": [{"age": 40.0, "income": None, "city": "rome"}]})
FEATURES = ("age", "income", "city")

records = st.lists(
    st.fixed_dictionaries(
        {
            "age": numbers,
            "income": numbers | st.none(),
            "city": st.sampled_from(["paris", "rome", "oslo"]) | texts,
        }
    ),
    min_size=1,
    max_size=8,
)


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[Any], int]:
    """Records with keys in any order, or rows (lists in model order)."""
    table = draw(records)
    if draw(st.booleans()):
        order = draw(st.permutations(FEATURES))
        return [{k: r[k] for k in order} for r in table], len(table)
    return [[r[k] for k in FEATURES] for r in table], len(table)


@fuzz(100)
@given(case=instances(), key=st.sampled_from(["instances", "inputs"]))
def test_well_formed_instances_get_one_prediction_each(http, case, key):
    values, n = case
    r = post(http, PATH, dumps({key: values}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == n
    assert set(body["predictions"]) <= {"yes", "no"}
    assert all(math.isclose(sum(p), 1, rel_tol=1e-5) for p in body["probabilities"])


def hostile(name: str) -> st.SearchStrategy[Any]:
    """Values the feature cannot take (income's missing value is null, or NaN as in V2)."""
    if name == "city":
        return numbers | not_numbers.filter(lambda v: not isinstance(v, str)) | non_finite
    missing_ok = name == "income"
    return (
        not_numbers.filter(lambda v: not (missing_ok and v is None))
        | huge_numbers
        | non_finite.filter(lambda v: not (missing_ok and math.isnan(v)))
    )


@fuzz(300)
@given(case=instances(), name=st.sampled_from(FEATURES), at=st.integers(0, 7), data=st.data())
def test_a_hostile_value_is_a_400_naming_its_feature(http, case, name, at, data):
    values, n = case
    bad = data.draw(hostile(name) | surrogates, label="bad")
    row = values[at % n]
    if isinstance(row, dict):
        row[name] = bad
    else:
        row[FEATURES.index(name)] = bad
    r = post(http, PATH, dumps({"instances": values}))
    if isinstance(bad, str) and name != "city":
        assert r.status_code == 400, r.text
    elif isinstance(bad, str):
        assert "surrogate" in r.json()["error"], r.text
    else:
        refused_naming(r, name)
    still_serves(http, PATH, GOOD)


@fuzz(400)
@given(
    case=instances(),
    extra=st.dictionaries(texts, any_json, min_size=1, max_size=3),
    data=st.data(),
)
def test_broken_structure_never_gets_a_5xx(http, case, extra, data):
    values, n = case
    how = data.draw(st.sampled_from(["row", "key", "top", "doc"]), label="how")
    if how == "row":
        values[data.draw(st.integers(0, n - 1))] = data.draw(any_json, label="row")
    elif how == "key" and isinstance(values[0], dict):
        values[0].update(extra)  # unknown features (or a known one overwritten)
    elif how == "key":
        values[0].extend(extra.values())  # too many values in a row
    doc: Any = {"instances": values, **extra} if how == "top" else {"instances": values}
    if how == "doc":
        doc = data.draw(any_json, label="doc")
    r = post(http, PATH, dumps(doc))
    no_server_error(r)
    still_serves(http, PATH, GOOD)
