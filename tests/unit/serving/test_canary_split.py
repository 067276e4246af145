"""The error-diffusion traffic split and the canary config file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.contracts.routing import RoutingConfig
from kubeloop.serving.canary import ConfigWatcher, Splitter


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
