"""One feature column as the model takes it (`kubeloop predict`), on Arrow arrays."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from kubeloop.contracts.artifacts import MISSING_TEXT
from kubeloop.inference import InputSpec
from kubeloop.trainer.errors import DataError
from kubeloop.trainer.predict import model_column

NUMBER = InputSpec("age", "FP32")
NULLABLE = InputSpec("age", "FP32", nullable=True)
TEXT = InputSpec("city", "BYTES")


@pytest.mark.parametrize(
    "values",
    [
        pa.array([1, 2, 3], pa.int64()),
        pa.array([1.0, 2.0, 3.0], pa.float32()),
        pa.array([True, False, True]),
        pa.array([Decimal("1.5"), Decimal("2"), Decimal("3")]),
        pa.array(["1", "2.5", "3e0"]),
    ],
)
def test_numbers_booleans_and_numeric_text_become_floats(values):
    col = model_column(values, NUMBER, offset=0)
    assert col.dtype == np.float64
    assert len(col) == 3


def test_a_missing_number_is_nan_when_the_feature_allows_it():
    col = model_column(pa.array([1.0, None]), NULLABLE, offset=0)
    assert math.isnan(col[1])


@pytest.mark.parametrize(
    ("values", "spec", "message"),
    [
        (pa.array([1.0, None]), NUMBER, "column 'age' is missing at row 101"),
        (pa.array([1.0, float("nan")]), NUMBER, "column 'age' is NaN at row 101"),
        (pa.array([1.0, float("inf")]), NUMBER, "column 'age' is infinite at row 101"),
        (pa.array([1.0, 1e300]), NUMBER, "at row 101, outside the range of FP32"),
        (pa.array(["1", "forty"]), NUMBER, "column 'age' takes numbers, but row 101 is 'forty'"),
        (pa.array([[1], [2]]), NUMBER, "column 'age' holds list<"),
        (pa.array([1.0, 2.5]), InputSpec("n", "INT64"), "column 'n' takes integers, but row 101"),
        (pa.array([1, 2]), TEXT, "column 'city' holds int64 values; the model takes text"),
    ],
)
def test_refused_values_name_the_column_and_the_row(values, spec, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model_column(values, spec, offset=100)


def test_text_keeps_its_values_and_missing_text_is_the_stand_in():
    col = model_column(pa.array(["rome", None]), TEXT, offset=0)
    assert col.tolist() == ["rome", MISSING_TEXT]
    dictionary = pa.array(["oslo", "rome", "oslo"]).dictionary_encode()
    assert model_column(dictionary, TEXT, offset=0).tolist() == ["oslo", "rome", "oslo"]
    large = pa.array(["a"], pa.large_string())
    assert model_column(large, TEXT, offset=0).tolist() == ["a"]
