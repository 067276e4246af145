"""Micro-batching: concurrent calls share one model call and get their own rows back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kubeloop.serving.batching import Feed, MicroBatcher, merge, split


def recording_model(factor: int = 1):
    """A model ``y = factor * x`` and the rows of each of its calls, in order."""
    calls: list[int] = []

    def run(feed):
        calls.append(len(feed["x"]))
        return {"y": feed["x"] * factor}

    return calls, run


def test_merge_and_split_round_trip():
    feeds = [
        {"x": np.arange(n, dtype=np.float32).reshape(n, 1) + 10 * i}
        for i, n in enumerate([1, 3, 2])
    ]
    merged = merge(feeds)
    assert merged["x"].shape == (6, 1)
    parts = split({"y": merged["x"] * 2}, [1, 3, 2])
    for feed, part in zip(feeds, parts, strict=True):
        assert np.array_equal(part["y"], feed["x"] * 2)


def columns_of(matrix):
    return {f"c{j}": np.ascontiguousarray(matrix[:, j : j + 1], dtype=np.float32)
            for j in range(matrix.shape[1])}  # fmt: skip


def lazy(matrix):
    feed = Feed()
    feed.matrix, feed.expand_with = matrix, columns_of
    return feed


def test_feeds_of_matrices_merge_as_one_matrix_cut_once():
    matrices = [np.arange(3.0).reshape(1, 3), np.arange(6.0).reshape(2, 3) + 10]
    merged = merge([lazy(m) for m in matrices])
    assert merged.lazy  # no columns cut yet
    assert np.array_equal(merged.matrix, np.concatenate(matrices))
    eager = merge([Feed(columns_of(m)) for m in matrices])
    assert merged.expanded().keys() == eager.keys()
    for name in eager:
        assert np.array_equal(merged[name], eager[name])
        assert merged[name].dtype == np.float32


def test_feeds_of_mixed_matrix_types_are_cut_each_on_its_own():
    ints, floats = np.array([[1, 2, 3]]), np.array([[0.5, 1.5, 2.5]])
    merged = merge([lazy(ints), lazy(floats)])
    assert not merged.lazy
    assert merged["c0"].tolist() == [[1.0], [0.5]]


@pytest.mark.parametrize("threaded", [False, True])
def test_concurrent_requests_are_coalesced(threaded):
    calls, run = recording_model(2)

    async def main():
        executor = ThreadPoolExecutor(1) if threaded else None
        b = MicroBatcher(run, max_batch_size=8, executor=executor)
        feeds = [{"x": np.full((1, 1), i, dtype=np.float32)} for i in range(20)]
        results = await asyncio.gather(*(b.infer(f, 1) for f in feeds))
        if executor:
            executor.shutdown()
        return feeds, results

    feeds, results = asyncio.run(main())
    for feed, result in zip(feeds, results, strict=True):
        assert np.array_equal(result["y"], feed["x"] * 2)
    assert sum(calls) == 20
    assert max(calls) <= 8
    assert len(calls) < 20  # coalesced


def test_a_single_request_is_not_delayed_and_an_oversized_one_runs_alone():
    calls, run = recording_model()

    async def main():
        b = MicroBatcher(run, max_batch_size=4)
        await b.infer({"x": np.zeros((1, 1))}, 1)
        await b.infer({"x": np.zeros((10, 1))}, 10)

    asyncio.run(main())
    assert calls == [1, 10]


def test_a_model_failure_reaches_every_caller_in_the_batch():
    def run(feed):
        raise RuntimeError("boom")

    async def main():
        b = MicroBatcher(run, max_batch_size=8)
        return await asyncio.gather(
            *(b.infer({"x": np.zeros((1, 1))}, 1) for _ in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.mark.parametrize("threaded", [False, True])
def test_one_failing_request_never_fails_the_others_in_its_batch(threaded):
    calls: list[int] = []

    def run(feed):
        calls.append(len(feed["x"]))
        if (feed["x"] < 0).any():
            raise RuntimeError("the model cannot take a negative row")
        return {"y": feed["x"] * 2}

    async def main():
        executor = ThreadPoolExecutor(1) if threaded else None
        b = MicroBatcher(run, max_batch_size=64, executor=executor)
        feeds = [{"x": np.full((1, 1), -1 if i == 3 else i, dtype=np.float32)} for i in range(6)]
        results = await asyncio.gather(*(b.infer(f, 1) for f in feeds), return_exceptions=True)
        if executor:
            executor.shutdown()
        return results

    results = asyncio.run(main())
    assert isinstance(results[3], RuntimeError)
    for i, r in enumerate(results):
        if i != 3:
            assert not isinstance(r, BaseException), r
            assert r["y"].tolist() == [[2.0 * i]]
    assert calls[0] > 1  # they did share a call first


def test_max_wait_lets_a_batch_fill():
    calls, run = recording_model()

    async def main():
        b = MicroBatcher(run, max_batch_size=4, max_wait_s=0.05)

        async def late(i):
            await asyncio.sleep(0.001 * i)
            return await b.infer({"x": np.zeros((1, 1))}, 1)

        await asyncio.gather(*(late(i) for i in range(4)))

    asyncio.run(main())
    assert calls == [4]


def test_after_a_run_of_lone_requests_they_skip_the_queue_until_concurrency_returns():
    from kubeloop.serving.batching import PROBE_EVERY, SOLO_STREAK

    calls, run = recording_model()

    async def main():
        b = MicroBatcher(run, max_batch_size=64)
        for _ in range(SOLO_STREAK + 3 * PROBE_EVERY):
            await b.infer({"x": np.zeros((1, 1))}, 1)
        assert b._direct > 0  # some ran without queueing
        # concurrency returns: a probe queues, and the others join it
        for _ in range(PROBE_EVERY):
            await asyncio.gather(*(b.infer({"x": np.zeros((1, 1))}, 1) for _ in range(20)))
        return b

    asyncio.run(main())
    assert max(calls) > 1


async def staggered(b: MicroBatcher, n: int, linger: bool):
    """``n`` requests, each starting one event-loop turn after the last (as grpc.aio
    hands over its RPCs), gathered."""

    async def one(i):
        for _ in range(i):
            await asyncio.sleep(0)
        return await b.infer({"x": np.full((1, 1), i, dtype=np.float32)}, 1, linger)

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_requests_a_loop_turn_apart_share_a_call_only_when_they_linger():
    calls, run = recording_model(3)

    async def main():
        b = MicroBatcher(run, max_batch_size=64, linger_s=0.2)
        plain = await staggered(b, 6, linger=False)
        lingered = await staggered(b, 6, linger=True)  # the first is the probe
        assert b.lingering  # its batch had company: the next ones linger too
        again = await staggered(b, 6, linger=True)
        return plain, lingered, again

    plain, lingered, again = asyncio.run(main())
    assert calls == [1] * 6 + [6, 6]
    for results in (plain, lingered, again):
        assert [float(r["y"][0, 0]) for r in results] == [3.0 * i for i in range(6)]


def test_one_request_at_a_time_waits_only_as_the_probe():
    calls, run = recording_model()

    async def main():
        b = MicroBatcher(run, max_batch_size=64, linger_s=0.05)
        await b.infer({"x": np.zeros((1, 1))}, 1, True)  # the probe: alone, so no lingering
        assert not b.lingering
        b.linger_s = 30.0  # a request that lingered now would outlast the deadline below
        for _ in range(5):
            await asyncio.wait_for(b.infer({"x": np.zeros((1, 1))}, 1, True), timeout=5)

    asyncio.run(main())
    assert calls == [1] * 6


def test_no_linger_time_means_no_waiting():
    calls, run = recording_model()

    async def main():
        b = MicroBatcher(run, max_batch_size=64)
        await asyncio.wait_for(staggered(b, 4, linger=True), timeout=5)
        assert not b.lingering

    asyncio.run(main())
    assert calls == [1] * 4
