"""PSI maths and the incremental sliding window."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeloop.serving.drift import (
    EPSILON,
    CategoricalReference,
    DriftWindow,
    NumericReference,
    max_score,
    numeric_buckets,
    psi,
)


def test_psi_is_zero_for_identical_distributions():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)


def test_psi_matches_the_textbook_formula():
    e = np.array([0.25, 0.25, 0.5])
    a = np.array([0.5, 0.25, 0.25])
    expected = float(np.sum((a - e) * np.log(a / e)))
    assert psi(e * 100, a * 40) == pytest.approx(expected)


def test_psi_smooths_empty_buckets_to_a_finite_value():
    value = psi([1, 0], [0, 1])
    assert math.isfinite(value)
    assert value == pytest.approx(2 * (1 - EPSILON) * math.log((1 - EPSILON) / EPSILON), rel=1e-3)


def test_numeric_buckets_follow_numpy_histogram_and_add_open_ends():
    edges = [0.0, 1.0, 2.0, 3.0]
    values = [-1.0, 0.0, 0.5, 1.0, 2.999, 3.0, 3.5, float("nan"), float("inf"), -float("inf")]
    # 0 underflow, 1..3 the bins, 4 overflow, 5 missing
    assert numeric_buckets(edges, values).tolist() == [0, 1, 1, 2, 3, 3, 4, 5, 4, 0]
    inside = [v for v in values if 0 <= v <= 3]
    hist, _ = np.histogram(inside, bins=edges)
    got = np.bincount(numeric_buckets(edges, inside), minlength=6)[1:4]
    assert got.tolist() == hist.tolist()


def test_reference_validation():
    with pytest.raises(ValueError, match="n\\+1 edges"):
        NumericReference("x", edges=[0, 1], counts=[1, 2])
    with pytest.raises(ValueError, match="must not decrease"):
        NumericReference("x", edges=[0, 2, 1], counts=[1, 2])
    with pytest.raises(ValueError, match="one count per category"):
        CategoricalReference("c", categories=["a"], counts=[1, 2])


def _refs():
    return [
        NumericReference("x", edges=[0.0, 1.0, 2.0, 3.0, 4.0], counts=[10, 20, 20, 10]),
        CategoricalReference("c", categories=["a", "b", "c"], counts=[50, 30, 20]),
        NumericReference("y", edges=[-1.0, 0.0, 1.0], counts=[5, 5]),
    ]


def _full_recompute(refs, rows):
    """PSI from scratch over the given rows (what the window must equal)."""
    out = {}
    for j, ref in enumerate(refs):
        col = [r[j] for r in rows]
        if isinstance(ref, NumericReference):
            b = numeric_buckets(ref.edges, np.asarray(col, dtype=float))
        else:
            b = np.array([ref.index.get(v, len(ref.categories)) for v in col])
        counts = np.bincount(b, minlength=ref.buckets)
        out[ref.name] = psi(ref.expected(), counts)
    return out


row_strategy = st.tuples(
    st.one_of(st.floats(-2, 6, allow_nan=False), st.just(float("nan"))),
    st.sampled_from(["a", "b", "c", "zzz"]),
    st.floats(-3, 3, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 40),
    batches=st.lists(st.lists(row_strategy, min_size=0, max_size=25), min_size=1, max_size=12),
)
def test_incremental_window_equals_full_recompute_of_the_last_rows(size, batches):
    refs = _refs()
    window = DriftWindow(refs, size)
    seen = []
    for batch in batches:
        seen.extend(batch)
        if batch:
            window.update([[r[j] for r in batch] for j in range(3)])
    last = seen[-size:]
    assert window.rows == len(last)
    if not last:
        return
    expected = _full_recompute(refs, last)
    got = window.scores()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12)
    counts = window.counts()
    assert all(int(c.sum()) == len(last) for c in counts)


def test_a_shifted_feature_drifts_and_a_stable_one_does_not():
    rng = np.random.default_rng(7)
    train = rng.normal(0, 1, 20_000)
    edges = np.quantile(train, np.linspace(0, 1, 11))
    counts, _ = np.histogram(train, bins=edges)
    ref = NumericReference("x", edges=edges.tolist(), counts=counts.tolist())
    same, shifted = DriftWindow([ref], 1000), DriftWindow([ref], 1000)
    same.update([rng.normal(0, 1, 1000)])
    shifted.update([rng.normal(1.5, 1, 1000)])
    assert same.scores()["x"] < 0.1
    assert shifted.scores()["x"] > 0.5
    assert max_score(shifted.scores()) == shifted.scores()["x"]


def test_unseen_categories_count_as_drift():
    ref = CategoricalReference("c", categories=["a", "b"], counts=[60, 40])
    w = DriftWindow([ref], 100)
    w.update([["a"] * 60 + ["b"] * 40])
    assert w.scores()["c"] == pytest.approx(0.0, abs=1e-6)
    w.update([["new"] * 50])
    assert w.counts()[0].tolist() == [10, 40, 50]
    assert w.scores()["c"] > 1.0


def test_an_empty_window_scores_zero():
    w = DriftWindow(_refs(), 10)
    assert w.rows == 0
    assert w.scores() == {"x": 0.0, "c": 0.0, "y": 0.0}
    assert max_score({}) == 0.0


def test_a_batch_larger_than_the_window_keeps_its_last_rows():
    ref = NumericReference("x", edges=[0.0, 1.0, 2.0], counts=[1, 1])
    w = DriftWindow([ref], 3)
    w.update([[0.5] * 10 + [1.5] * 3])
    assert w.counts()[0].tolist() == [0, 0, 3, 0, 0]


def test_buffered_rows_are_flushed_before_any_read():
    ref = NumericReference("x", edges=[0.0, 1.0, 2.0], counts=[1, 1])
    w = DriftWindow([ref], 100, flush_rows=1000)
    w.update_matrix(np.array([[0.5], [1.5], [1.7]]))
    assert w.rows == 3
    assert w.counts()[0].tolist() == [0, 1, 2, 0, 0]
    mixed = DriftWindow([ref, CategoricalReference("c", ["a"], [1])], 100, flush_rows=1000)
    with pytest.raises(ValueError, match="numeric columns only"):
        mixed.update_matrix(np.zeros((1, 2)))
