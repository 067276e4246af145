"""The queue bounded by count and bytes: a put never waits, the oldest make room. The byte
budget: spends what it holds, never waits, says how long until it would hold enough."""

from __future__ import annotations

import threading

from kubeloop.serving.bounded import BoundedQueue, ByteBudget


def test_past_the_count_the_oldest_are_dropped():
    q: BoundedQueue[str] = BoundedQueue(max_items=2, max_bytes=1000)
    assert q.put("a", 1) == []
    assert q.put("b", 1) == []
    assert q.put("c", 1) == ["a"]
    assert q.take(10, 1000, timeout=0) == ["b", "c"]
    assert (len(q), q.bytes) == (0, 0)


def test_an_item_standing_for_several_counts_as_that_many():
    q: BoundedQueue[str] = BoundedQueue(max_items=3, max_bytes=1000)
    assert q.put("one", 1) == []
    assert q.put("three", 3, count=3) == ["one"]  # 4 would be 5 items: the oldest goes
    assert len(q) == 3
    assert q.take(10, 1000, timeout=0) == ["three"]
    q.put("a", 1)
    q.put("pair", 2, count=2)
    assert q.take(2, 1000, timeout=0) == ["a"]  # the pair would pass the count taken
    assert q.take(1, 1000, timeout=0) == ["pair"]  # but at least one item is taken
    assert (len(q), q.bytes) == (0, 0)


def test_past_the_bytes_as_many_of_the_oldest_as_needed_are_dropped():
    q: BoundedQueue[str] = BoundedQueue(max_items=100, max_bytes=10)
    for name in "abcde":
        assert q.put(name, 2) == []
    assert q.put("big", 5) == ["a", "b", "c"]
    assert (len(q), q.bytes) == (3, 9)
    assert q.put("huge", 11) == ["d", "e", "big", "huge"]  # over the bound alone
    assert (len(q), q.bytes) == (0, 0)


def test_take_is_bounded_by_count_and_bytes_but_takes_at_least_one():
    q: BoundedQueue[int] = BoundedQueue(max_items=100, max_bytes=1000)
    for i in range(5):
        q.put(i, 100 if i else 500)
    assert q.take(10, 300, timeout=0) == [0]  # one, even over the byte budget
    assert q.take(10, 300, timeout=0) == [1, 2, 3]
    assert q.take(1, 300, timeout=0) == [4]
    assert q.take(10, 300, timeout=0) == []


def test_take_waits_for_a_put():
    q: BoundedQueue[str] = BoundedQueue(max_items=10, max_bytes=100)
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(q.take(10, 100, timeout=30)))
    taker.start()
    q.put("x", 1)
    taker.join(30)
    assert got == [["x"]]


def test_clear_returns_what_was_queued():
    q: BoundedQueue[str] = BoundedQueue(max_items=10, max_bytes=100)
    q.put("x", 3)
    q.put("y", 4)
    assert q.clear() == ["x", "y"]
    assert (len(q), q.bytes) == (0, 0)


def test_the_consumer_is_woken_for_a_batch_not_for_each_item():
    q: BoundedQueue[int] = BoundedQueue(max_items=100, max_bytes=10_000, wake_at=3)
    q.put(0, 1)
    q.put(1, 1)
    woke: list[list[int]] = []
    taker = threading.Thread(target=lambda: woke.append(q.take(10, 100, timeout=30)))
    taker.start()
    q.put(2, 1)  # the third item: a batch, the taker wakes long before its 30 s
    taker.join(30)
    assert woke == [[0, 1, 2]]
    q.put(3, 1)
    assert q.take(10, 100, timeout=0) == [3]  # below a batch: what there is, at the timeout


def test_half_the_byte_bound_wakes_the_consumer_too():
    q: BoundedQueue[str] = BoundedQueue(max_items=100, max_bytes=100, wake_at=50)
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(q.take(10, 100, timeout=30)))
    taker.start()
    q.put("big", 60)
    taker.join(30)
    assert got == [["big"]]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_holds_its_burst_then_refills_at_its_rate():
    clock = Clock()
    budget = ByteBudget(rate=1000, burst=4000, clock=clock)
    assert budget.take(3000) == 0.0
    assert budget.take(1500) == 0.5  # 1000 held: 500 more, at 1000 a second
    clock.now += 0.5
    assert budget.take(1500) == 0.0
    clock.now += 60  # an idle bucket holds its burst, not a minute's worth
    assert budget.take(4000) == 0.0
    assert budget.take(1) > 0


def test_a_body_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt():
    clock = Clock()
    budget = ByteBudget(rate=100, burst=50, clock=clock)  # the burst is at least the rate
    assert budget.burst == 100
    assert budget.take(100) == 0.0
    assert budget.take(500) == 1.0  # never more than a full bucket to wait for
    clock.now += 1.0
    assert budget.take(500) == 0.0
    assert budget.take(1) == 4.01  # the 400 over the burst are paid back first


def test_rate_zero_is_no_budget():
    budget = ByteBudget(rate=0, burst=10)
    assert all(budget.take(10**9) == 0.0 for _ in range(3))


def test_a_body_of_unknown_length_is_let_in_while_not_in_debt_and_charged_once_read():
    clock = Clock()
    budget = ByteBudget(rate=100, burst=100, clock=clock)
    assert budget.take(0) == 0.0
    budget.spend(300)  # read: 200 over what the bucket held
    assert budget.take(0) == 2.0
    clock.now += 2.0
    assert budget.take(0) == 0.0
