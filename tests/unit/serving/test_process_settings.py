"""Process-wide settings applied at start: the shutdown budget's split and the
interpreter's thread switch interval."""

from __future__ import annotations

import sys

import pytest

from kubeloop.serving.app import create_app
from kubeloop.serving.cli import connection_timeout


@pytest.mark.parametrize(
    ("shutdown_timeout", "connections"),
    [(30.0, 25), (10.0, 5), (4.0, 2), (3.0, 1), (1.0, 0), (0.5, 0), (3600.0, 3595)],
)
def test_in_flight_requests_get_the_budget_less_a_reserve_for_the_sinks(
    shutdown_timeout, connections
):
    assert connection_timeout(shutdown_timeout) == connections


def test_the_thread_switch_interval_is_set_from_the_settings(monkeypatch, tmp_path):
    before = sys.getswitchinterval()
    monkeypatch.setenv("KUBELOOP_SERVING_MODEL", str(tmp_path))
    monkeypatch.setenv("KUBELOOP_SERVING_THREAD_SWITCH_MS", "0.5")
    try:
        app = create_app()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        assert app.settings.thread_switch_ms == 0.5
    finally:
        sys.setswitchinterval(before)
