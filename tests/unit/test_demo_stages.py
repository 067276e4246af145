"""The demo's closing stage table: the total and the time outside the canary pauses."""

from __future__ import annotations

from kubeloop.devcluster.demo import Summary, stage_lines


def test_outside_pauses_is_the_total_less_the_configured_pauses() -> None:
    summary = Summary(stages=[("Dataset: snapshot", 12.4), ("Canary v2: 20% then 50%", 51.0)])
    summary.paused = 40.0
    lines = stage_lines(summary)
    assert lines[0] == "Stages"
    assert lines[-2].split() == ["63.4s", "total"]
    assert lines[-1] == "  outside pauses: 23 s"


def test_without_pauses_the_whole_total_is_outside_them() -> None:
    lines = stage_lines(Summary(stages=[("Predictions: through Service", 2.6)]))
    assert lines[-1] == "  outside pauses: 3 s"
    assert stage_lines(Summary())[-1] == "  outside pauses: 0 s"
