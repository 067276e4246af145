"""Feedback join and the rolling online metric."""

from __future__ import annotations

import math

import pytest

from kubeloop.serving.feedback import FeedbackStore, remembered_size


def test_accuracy_over_a_rolling_window():
    store = FeedbackStore("classification", capacity=100, window=4)
    for i in range(6):
        store.remember(f"r{i}", [i % 2])
    matched, unknown, duplicates = store.record([(f"r{i}", 0) for i in range(6)] + [("nope", 1)])
    assert (matched, unknown, duplicates) == (6, ["nope"], 0)
    # last four rows: r2 (0 ok), r3 (1 vs 0), r4 (ok), r5 (1 vs 0)
    assert store.value() == pytest.approx(0.5)
    assert store.rows == 4
    assert store.totals() == (2.0, 4)


def test_labels_compare_across_json_types():
    store = FeedbackStore("classification", capacity=10, window=10)
    store.remember("a", [1, "yes", True])
    assert store.record([("a", [1.0, "yes", "true"])]) == (3, [], 0)
    assert store.value() == 1.0


def test_rmse_and_per_row_truth():
    store = FeedbackStore("regression", capacity=10, window=10)
    store.remember("a", [1.0, 2.0])
    store.remember("b", [0.0])
    store.record([("a", [2.0, 2.0]), ("b", 3.0)])
    assert store.value() == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    # the squared errors and rows, which replicas add up for the deployment's RMSE
    assert store.totals() == (10.0, 3)


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
    assert store.record([("a", 0), ("b", 0), ("c", 0)]) == (2, ["a"], 0)


def test_capacity_evictions_are_reported():
    evicted: list[tuple[str, int]] = []
    store = FeedbackStore(
        "classification", capacity=2, window=10, on_evicted=lambda *e: evicted.append(e)
    )
    for rid in ("a", "b", "c", "d"):
        store.remember(rid, [0])
    assert evicted == [("count", 1), ("count", 1)]
    assert len(store) == 2


def test_the_store_is_bounded_in_bytes_and_forgets_the_oldest():
    evicted: list[tuple[str, int]] = []
    one = remembered_size("r0000", [0])
    store = FeedbackStore(
        "classification", capacity=1000, window=10, max_bytes=10 * one,
        on_evicted=lambda *e: evicted.append(e),
    )  # fmt: skip
    for i in range(25):
        store.remember(f"r{i:04d}", [0])
    assert len(store) == 10
    assert store.bytes == 10 * one
    assert sum(n for limit, n in evicted if limit == "bytes") == 15
    assert store.record([("r0014", 0), ("r0015", 0), ("r0024", 0)]) == (2, ["r0014"], 0)
    # a larger request pushes out as many of the oldest as its size needs
    big = remembered_size("big", [0] * 6)
    assert one < big <= 2 * one
    store.remember("big", [0] * 6)
    assert len(store) == 9
    assert store.bytes == 8 * one + big
    assert store.record([("r0016", 0), ("r0017", 0)]) == (1, ["r0016"], 0)


def test_string_labels_count_their_text():
    assert remembered_size("a", ["x" * 1000]) >= 1000 + remembered_size("a", [0])
    store = FeedbackStore("classification", capacity=100, window=10, max_bytes=64 * 1024)
    store.remember("huge", ["y" * (65 * 1024)])  # over the bound alone: not kept
    assert len(store) == 0
    assert store.bytes == 0


def test_a_replayed_id_counts_once():
    store = FeedbackStore("classification", capacity=100, window=100)
    for i in range(5):
        store.remember(f"r{i}", [1])
    first = store.record([(f"r{i}", 1) for i in range(5)])
    assert first == (5, [], 0)
    for _ in range(10):
        assert store.record([(f"r{i}", 0) for i in range(5)]) == (0, [], 5)
    assert store.rows == 5
    assert store.value() == 1.0  # the replays' wrong labels never counted


def test_a_repeated_id_in_one_call_counts_once_and_a_new_prediction_counts_again():
    store = FeedbackStore("regression", capacity=100, window=100)
    store.remember("a", [1.0, 2.0])
    assert store.record([("a", [1.0, 2.0]), ("a", [5.0, 5.0])]) == (2, [], 1)
    store.remember("a", [3.0])  # the id answered again: a new prediction to score
    assert store.record([("a", 4.0)]) == (1, [], 0)
    assert store.value() == pytest.approx(math.sqrt(1 / 3))


def test_a_rejected_call_marks_nothing_as_counted():
    store = FeedbackStore("regression", capacity=10, window=10)
    store.remember("a", [1.0])
    with pytest.raises(ValueError, match="number"):
        store.record([("a", 1.0), ("a", "x")])
    assert store.record([("a", 1.0)]) == (1, [], 0)


def test_large_feedback_calls_are_scored_in_chunks():
    store = FeedbackStore("classification", capacity=5000, window=10_000)
    for i in range(3000):
        store.remember(f"r{i}", [i % 3])
    items = [(f"r{i}", i % 3) for i in range(3000)] + [("r7", 1)]
    assert store.record(items) == (3000, [], 1)
    assert store.value() == 1.0
