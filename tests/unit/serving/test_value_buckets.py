"""The prediction-value buckets a profile gives: a canary exports its stable model's, so
both must come out of one profile the same way, whatever the profile holds."""

from __future__ import annotations

import json

from kubeloop.serving.describe import DEFAULT_VALUE_BUCKETS, value_buckets


def profile(prediction: dict | None) -> bytes:
    doc: dict = {"rows": 10, "features": {}}
    if prediction is not None:
        doc["prediction"] = prediction
    return json.dumps(doc).encode()


def numeric(edges: list) -> dict:
    return {"kind": "numeric", "edges": edges, "counts": [1] * (len(edges) - 1)}


def test_numeric_prediction_edges_are_the_buckets():
    assert value_buckets(profile(numeric([0.5, 1.5, 9.0]))) == (0.5, 1.5, 9.0)


def test_repeated_and_non_finite_edges_leave_one_valid_bucket_each():
    # quantile cut points repeat on skewed data; a histogram needs increasing bounds
    raw = b'{"rows": 3, "features": {}, "prediction": {"kind": "numeric", '
    raw += b'"edges": [1.0, 1.0, NaN, 2.0, Infinity, 2.0], "counts": [1, 1, 1, 1, 1]}}'
    assert value_buckets(raw) == (1.0, 2.0)
    assert value_buckets(profile(numeric([3.0, 3.0]))) == (3.0,)


def test_no_profile_or_no_numeric_prediction_gives_the_defaults():
    assert value_buckets(None) == DEFAULT_VALUE_BUCKETS
    assert value_buckets(profile(None)) == DEFAULT_VALUE_BUCKETS
    categorical = {"kind": "categorical", "frequencies": {"a": 3}}
    assert value_buckets(profile(categorical)) == DEFAULT_VALUE_BUCKETS


def test_the_canary_settings_refuse_what_would_make_a_bad_label_or_path():
    import pydantic
    import pytest

    from kubeloop.serving.settings import ServingSettings

    ok = ServingSettings(model="/m", canary_version="12", prediction_buckets_from="s3://b/m/v1")
    assert (ok.canary_version, ok.prediction_buckets_from) == ("12", "s3://b/m/v1")
    for bad in ({"canary_version": 'v1"} 1'}, {"canary_version": "x" * 64},
                {"prediction_buckets_from": ""}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError):
            ServingSettings(model="/m", **bad)
