"""Feedback join and the rolling online metric."""

from __future__ import annotations

import math

import pytest

from kubeloop.serving.feedback import FeedbackStore


def test_accuracy_over_a_rolling_window():
    store = FeedbackStore("classification", capacity=100, window=4)
    for i in range(6):
        store.remember(f"r{i}", [i % 2])
    matched, unknown = store.record([(f"r{i}", 0) for i in range(6)] + [("nope", 1)])
    assert (matched, unknown) == (6, ["nope"])
    # last four rows: r2 (0 ok), r3 (1 vs 0), r4 (ok), r5 (1 vs 0)
    assert store.value() == pytest.approx(0.5)
    assert store.rows == 4


def test_labels_compare_across_json_types():
    store = FeedbackStore("classification", capacity=10, window=10)
    store.remember("a", [1, "yes", True])
    assert store.record([("a", [1.0, "yes", "true"])]) == (3, [])
    assert store.value() == 1.0


def test_rmse_and_per_row_truth():
    store = FeedbackStore("regression", capacity=10, window=10)
    store.remember("a", [1.0, 2.0])
    store.remember("b", [0.0])
    store.record([("a", [2.0, 2.0]), ("b", 3.0)])
    assert store.value() == pytest.approx(math.sqrt((1 + 0 + 9) / 3))


def test_bad_feedback_records_nothing():
    store = FeedbackStore("regression", capacity=10, window=10)
    store.remember("a", [1.0, 2.0])
    store.remember("b", [1.0])
    with pytest.raises(ValueError, match="2 row"):
        store.record([("b", 1.0), ("a", 1.0)])
    with pytest.raises(ValueError, match="number"):
        store.record([("b", "x")])
    assert store.value() is None


def test_capacity_forgets_the_oldest():
    store = FeedbackStore("classification", capacity=2, window=10)
    for rid in ("a", "b", "c"):
        store.remember(rid, [0])
    assert store.record([("a", 0), ("b", 0), ("c", 0)]) == (2, ["a"])
