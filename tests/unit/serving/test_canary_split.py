"""The error-diffusion traffic split and the canary config file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.contracts.routing import RoutingConfig, parse_routing
from kubeloop.serving.canary import ConfigWatcher, Splitter, sticky_bucket


@given(weight=st.floats(0, 100), n=st.integers(1, 5000))
def test_share_is_exact_within_one_request(weight, n):
    s = Splitter(weight)
    picked = sum(s.pick() for _ in range(n))
    assert abs(picked - n * weight / 100) <= 1


def test_picks_are_spread_evenly():
    s = Splitter(25)
    picks = [s.pick() for _ in range(16)]
    assert picks == [False, False, False, True] * 4


def test_config_file_changes_are_picked_up_and_bad_content_is_ignored(tmp_path):
    path = tmp_path / "canary.yaml"
    path.write_text("canary_url: http://127.0.0.1:1\nweight: 10\n")
    w = ConfigWatcher(path)
    assert w.poll() == RoutingConfig(url="http://127.0.0.1:1", weight=10)
    assert w.poll() is None  # unchanged
    path.write_text('{"canary_url": "http://127.0.0.1:1", "weight": 250}')
    assert w.poll() is None  # invalid: keep the current one
    path.write_text(
        '{"canary_url": "http://127.0.0.1:1", "weight": 30, "shadow": true, "canary_version": 3}'
    )
    assert w.poll() == RoutingConfig(
        url="http://127.0.0.1:1", weight=30, shadow=True, canary_version=3
    )
    path.unlink()
    assert w.poll() == RoutingConfig()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="canary_url"):
        RoutingConfig.model_validate({"canary_url": "ftp://x", "weight": 5})


WEIGHTS = (0, 1, 5, 10, 20, 33, 50, 90, 100)


@pytest.mark.parametrize("weight", WEIGHTS)
def test_split_over_2000_requests_is_within_two_points(weight):
    s = Splitter(weight)
    share = 100 * sum(s.pick() for _ in range(2000)) / 2000
    assert abs(share - weight) <= 2


@pytest.mark.parametrize("weight", WEIGHTS)
def test_several_workers_each_splitting_add_up_to_the_target(weight):
    """Requests land on 3 pods x 4 workers unevenly (a seeded shuffle): each process
    splits on its own and the total is still within the bound."""
    import random

    rng = random.Random(weight)
    workers = [Splitter(weight) for _ in range(12)]
    picks = [workers[rng.randrange(12)].pick() for _ in range(2000)]
    assert abs(100 * sum(picks) / 2000 - weight) <= 2


def test_a_weight_change_restarts_the_diffusion():
    s = Splitter(50)
    assert [s.pick() for _ in range(3)] == [False, True, False]
    s.set_weight(20)
    assert [s.pick() for _ in range(5)] == [False, False, False, False, True]


def callers(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


def test_a_sticky_caller_stays_on_one_side():
    s = Splitter(30)
    for who in callers(200):
        first = s.pick(who)
        assert all(s.pick(who) == first for _ in range(5))
        assert first == (sticky_bucket(who) < 30)  # the same in every process


def test_sticky_callers_only_move_towards_the_canary_as_the_weight_rises():
    on_canary: set[bytes] = set()
    for weight in (1, 5, 10, 20, 50, 100):
        now = {who for who in callers(2000) if Splitter(weight).pick(who)}
        assert on_canary <= now
        on_canary = now
    assert len(on_canary) == 2000


@pytest.mark.parametrize("weight", [5, 20, 50])
def test_sticky_callers_are_split_by_the_weight(weight):
    s = Splitter(weight)
    share = 100 * sum(s.pick(who) for who in callers(20_000)) / 20_000
    assert abs(share - weight) <= 1


def test_sticky_requests_leave_the_round_robin_alone():
    s = Splitter(25)
    picks = []
    for _i in range(16):
        s.pick(b"someone")  # interleaved sticky traffic
        picks.append(s.pick())
    assert picks == [False, False, False, True] * 4


def test_sticky_header_travels_in_the_routing_file():
    config = RoutingConfig(url="http://c:8080", weight=10, sticky_header="x-user")
    assert parse_routing(config.to_file()) == config
    assert "sticky_header" not in RoutingConfig(url="http://c:8080", weight=10).to_file()
    with pytest.raises(ValueError, match="sticky_header"):
        RoutingConfig.model_validate({"sticky_header": "x user"})
