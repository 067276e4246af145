"""The fuzz tier's shared parts: the hypothesis profile, hostile JSON values, and the
checks every case ends with (no 5xx; a client error is JSON naming the problem; the
server still answers a good request)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = "kubeloop-fuzz"
#: the largest float32; beyond it a value cannot be an FP32 input
FP32_MAX = 3.4028234663852886e38


def register_profile() -> None:
    """Derandomized (the same cases every run, no example database), bounded, no
    per-example deadline: a loaded machine makes some cases slow, never failing."""
    settings.register_profile(
        PROFILE,
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=100,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def fuzz(max_examples: int) -> settings:
    """The tier's profile with this test's example budget."""
    return settings(settings.get_profile(PROFILE), max_examples=max_examples)


# ------------------------------------------------------------------ values

#: strings with at least one lone UTF-16 surrogate (JSON can spell them; no character)
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3).flatmap(
    lambda s: st.sampled_from([s, "paris" + s, s + "x"])
)
#: any text a client can send that is valid Unicode
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
#: numbers far beyond FP32 (and, for integers, beyond 64 bits and beyond FP64)
huge_numbers = (
    st.integers(10**39, 10**400)
    | st.integers(-(10**400), -(10**39))
    | st.floats(min_value=3.5e38, allow_infinity=False)
    | st.floats(max_value=-3.5e38, allow_infinity=False)
)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
#: JSON values that are no number at all
not_numbers = (
    st.booleans()
    | st.none()
    | texts
    | st.dictionaries(texts, st.integers(), max_size=2)
    | st.lists(st.integers(), min_size=2, max_size=3)  # nested: too many values
    | st.just([])
)
#: leaves and nested structures of every kind, surrogates included
any_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats() | huge_numbers | texts | surrogates
)
any_json = st.recursive(
    any_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)
#: well-formed feature values: finite and well within FP32
numbers = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)


def dumps(doc: Any) -> bytes:
    """JSON as Python writes it: NaN/Infinity literals, surrogates as \\uXXXX escapes."""
    return json.dumps(doc).encode()


# ------------------------------------------------------------------ checks


def no_server_error(r: httpx.Response) -> None:
    """Never a 5xx; a client error is a JSON ``{"error": str}``."""
    assert r.status_code < 500, (r.status_code, r.text[:2000])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error, str), r.text
        assert error, r.text


def refused_naming(r: httpx.Response, name: str) -> None:
    """A 400 whose message names the input (or feature) at fault."""
    assert r.status_code == 400, (r.status_code, r.text[:2000])
    assert f"'{name}" in r.json()["error"], r.text[:2000]


def still_serves(http: httpx.Client, path: str, good: bytes) -> None:
    """The server answers a good request after a case."""
    r = http.post(path, content=good, headers={"content-type": "application/json"})
    assert r.status_code == 200, (r.status_code, r.text[:2000])


def post(http: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json", **headers})
