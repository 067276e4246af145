"""Canary analysis, decision by decision, without a cluster or a Prometheus (fixed time)."""

from __future__ import annotations

import math
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeloop.api.v1alpha1 import Analysis, AnalysisMetric, ModelDeploymentSpec
from kubeloop.operator import analysis as a
from kubeloop.operator.handlers.modeldeployment import (
    PROMOTE,
    advance,
    choose_version,
    rejected_versions,
)
from kubeloop.operator.prometheus import NO_PROMETHEUS, PrometheusClient, parse_vector
from kubeloop.operator.settings import OperatorSettings
from kubeloop.operator.timestamps import rfc3339

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TARGET = a.Target("prod", "cancer", 3, 2)
ERRORS = AnalysisMetric.model_validate({"name": "errors", "builtin": "errorRate", "max": 0.05})
LATENCY = AnalysisMetric.model_validate(
    {"name": "latency", "builtin": "latencyP99Ratio", "max": 1.5}
)
SHIFT = AnalysisMetric.model_validate({"name": "shift", "builtin": "predictionShift", "max": 0.2})
ANALYSIS = Analysis.model_validate(
    {"interval": "30s", "failureLimit": 3, "minRequests": 20, "metrics": [ERRORS.to_wire()]}
)
SPEC = ModelDeploymentSpec.model_validate(
    {
        "modelName": "m",
        "canary": {
            "steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
            "progressDeadline": "5m",
            "analysis": ANALYSIS.to_wire(),
        },
    }
)


def ago(seconds: float) -> str:
    return rfc3339(NOW - timedelta(seconds=seconds))


def canary_state(**analysis: Any) -> dict[str, Any]:
    """Version 3 under canary at step 0 since 2 minutes, with this analysis status."""
    return {
        "stableVersion": 2,
        "canaryVersion": 3,
        "canaryStep": 0,
        "stepStartedTime": ago(120),
        "canaryStartedTime": ago(180),
        "canary": {"analysis": analysis} if analysis else None,
    }


# ------------------------------------------------------------------ queries


def test_query_templating_substitutes_the_four_names():
    metric = AnalysisMetric.model_validate(
        {
            "name": "custom",
            "query": 'sum(x{namespace="{{ namespace }}",d="{{deployment}}",'
            'v="{{  canaryVersion }}",s="{{ stableVersion }}",o="{{ other }}"})',
            "max": 1,
        }
    )
    expr = a.plan(metric, TARGET)["value"].expr
    assert expr == 'sum(x{namespace="prod",d="cancer",v="3",s="2",o="{{ other }}"})'


def test_builtins_read_the_canary_pods_own_series():
    queries = a.plan(ERRORS, TARGET)
    canary = 'namespace="prod",model_deployment="cancer",role="canary",version="3"'
    assert canary in queries["requests"].expr
    assert canary in queries["errors"].expr
    assert 'code=~"5.."' in queries["errors"].expr
    assert 'version="3",outcome="unreachable"' in queries["unreachable"].expr
    latency = a.plan(LATENCY, TARGET)
    assert 'role="stable",version="2"' in latency["stable"].expr
    assert latency["canary"].expr.startswith("histogram_quantile(0.99,")
    assert a.plan(SHIFT, TARGET)["canary"].by == "class"
    regression = a.Target("prod", "cancer", 3, 2, task="regression")
    shift = a.plan(SHIFT, regression)["canary"]
    assert shift.by == "le"
    assert "kubeloop_prediction_value_bucket" in shift.expr
    assert "[1m]" in shift.expr  # the metric's window


# ------------------------------------------------------------------ maths


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift():
    assert a.psi({"0": 50, "1": 50}, {"0": 500, "1": 500}) == pytest.approx(0.0)
    p, q = 0.9 + 1e-4, 0.5 + 1e-4
    r, s = 0.1 + 1e-4, 0.5 + 1e-4
    expected = (p - q) * math.log(p / q) + (r - s) * math.log(r / s)
    assert a.psi({"0": 90, "1": 10}, {"0": 50, "1": 50}) == pytest.approx(expected)
    # a class only one side predicts counts too (smoothed, finite)
    assert 0 < a.psi({"0": 10}, {"1": 10}) < math.inf  # type: ignore[operator]
    assert a.psi({}, {"0": 1}) is None


def test_bucket_counts_undo_the_cumulative_histogram():
    cumulative = {"+Inf": 10.0, "0.5": 3.0, "1.0": 7.0}
    assert a.bucket_counts(cumulative) == {"0.5": 3.0, "1.0": 4.0, "+Inf": 3.0}


# ------------------------------------------------------------------ readings


def test_too_few_canary_requests_is_no_data():
    read = a.reading(ERRORS, {"requests": {"": 19.0}, "errors": {}}, {}, min_requests=20)
    assert read.value is None
    assert "19 canary requests" in read.reason


def test_error_rate_counts_forwards_that_never_reached_the_canary():
    answers = {"requests": {"": 90.0}, "errors": {"": 5.0}, "unreachable": {"": 10.0}}
    read = a.reading(ERRORS, answers, {}, min_requests=20)  # type: ignore[arg-type]
    assert read.value == pytest.approx(15 / 100)
    # no series of the stable pods' counter: none lost
    clean = a.reading(ERRORS, {"requests": {"": 40.0}, "errors": {}}, {}, min_requests=20)
    assert clean.value == 0.0


def test_a_failed_query_is_no_data_naming_it():
    read = a.reading(ERRORS, {"requests": None}, {"requests": "ConnectError: refused"}, 20)
    assert read.value is None
    assert "query requests failed: ConnectError" in read.reason


def test_latency_ratio_and_missing_histogram():
    answers = {"requests": {"": 50.0}, "canary": {"": 0.2}, "stable": {"": 0.1}}
    assert a.reading(LATENCY, answers, {}, 20).value == pytest.approx(2.0)  # type: ignore[arg-type]
    nan = {"requests": {"": 50.0}, "canary": {"": 0.2}, "stable": {"": math.nan}}
    assert a.reading(LATENCY, nan, {}, 20).value is None  # type: ignore[arg-type]


def test_user_query_must_return_one_series():
    metric = AnalysisMetric.model_validate({"name": "q", "query": "up", "max": 1})
    two = {"requests": {"": 50.0}, "value": {"": 1.0, "1": 0.0}}
    assert "2 series" in a.reading(metric, two, {}, 20).reason  # type: ignore[arg-type]
    one = {"requests": {"": 50.0}, "value": {"": 0.5}}
    assert a.reading(metric, one, {}, 20).value == 0.5  # type: ignore[arg-type]


def test_shadow_agreement_sums_the_stable_pods_comparisons_of_the_canary_version():
    metric = AnalysisMetric.model_validate(
        {"name": "agree", "builtin": "shadowAgreement", "min": 0.9}
    )
    queries = a.plan(metric, TARGET)
    sel = 'namespace="prod",model_deployment="cancer",version="3"'
    assert queries["agree"].expr == (
        f'sum(increase(kubeloop_shadow_compared_total{{{sel},result=~"agree"}}[{metric.window}]))'
    )
    assert 'result=~"agree|disagree"' in queries["compared"].expr
    answers = {"requests": {"": 50.0}, "agree": {"": 45.0}, "compared": {"": 50.0}}
    assert a.reading(metric, answers, {}, 20).value == pytest.approx(0.9)  # type: ignore[arg-type]
    none = {"requests": {"": 50.0}, "agree": {}, "compared": {}}
    assert "no mirrored" in a.reading(metric, none, {}, 20).reason  # type: ignore[arg-type]


@pytest.mark.parametrize("builtin", ["onlineMetric"])
def test_builtins_not_measured_yet_are_no_data_with_a_reason(builtin: str):
    metric = AnalysisMetric.model_validate({"name": "x", "builtin": builtin, "min": 0.9})
    read = a.reading(metric, {"requests": {"": 50.0}}, {}, 20)
    assert read.value is None
    assert "not exported" in read.reason


def test_judge_names_the_check_value_and_bound():
    assert a.judge(ERRORS, a.Reading(0.25)).message == "errors 0.25 > 0.05"
    low = AnalysisMetric.model_validate({"name": "acc", "query": "x", "min": 0.9})
    assert a.judge(low, a.Reading(0.5)).result == "Fail"
    assert a.judge(ERRORS, a.Reading(0.05)).result == "Pass"
    assert a.judge(ERRORS, a.Reading(None, "why")).result == "NoData"


def test_no_data_pauses_or_fails_as_configured():
    missing = [a.Check("errors", "NoData", None, "errors: no data (x)")]
    assert a.verdict(ANALYSIS, missing).result == "NoData"
    failing = ANALYSIS.model_copy(update={"on_no_data": "Fail"})
    assert a.verdict(failing, missing).result == "Fail"
    mixed = [*missing, a.Check("b", "Fail", 1.0, "b 1 > 0")]
    assert a.verdict(ANALYSIS, mixed).result == "Fail"


# ------------------------------------------------------------------ when and what next


def test_a_check_needs_weight_and_the_interval():
    state = canary_state()
    assert not a.check_due(ANALYSIS, state, 0, NOW)  # no weight yet
    assert not a.check_due(ANALYSIS, {**state, "stepStartedTime": None}, 10, NOW)
    assert a.check_due(ANALYSIS, state, 10, NOW)  # never checked
    recent = canary_state(lastCheckTime=ago(10), lastCheckStep=0)
    assert not a.check_due(ANALYSIS, recent, 10, NOW)
    assert a.check_due(ANALYSIS, canary_state(lastCheckTime=ago(30), lastCheckStep=0), 10, NOW)
    # a new step is checked at once
    assert a.check_due(ANALYSIS, {**recent, "canaryStep": 1}, 50, NOW)


def test_analyse_counts_failures_in_status():
    fail = a.Verdict("Fail", [a.Check("errors", "Fail", 0.3, "errors 0.3 > 0.05")])
    after = a.analyse(ANALYSIS, canary_state(failedChecks=1), fail, 10, NOW)["analysis"]
    assert after["failedChecks"] == 2
    assert (after["lastCheckStep"], after["lastCheckWeight"], after["lastResult"]) == (
        0,
        10,
        "Fail",
    )
    assert after["results"] == [
        {"name": "errors", "result": "Fail", "value": 0.3, "message": "errors 0.3 > 0.05"}
    ]
    nodata = a.Verdict("NoData", [a.Check("errors", "NoData", None, "no data")])
    assert (
        a.analyse(ANALYSIS, canary_state(failedChecks=1), nodata, 10, NOW)["analysis"][
            "failedChecks"
        ]
        == 1
    )


def test_a_step_advances_only_after_a_passing_check_taken_after_its_weight():
    before = canary_state(lastResult="Pass", lastCheckStep=0, lastCheckTime=ago(150))
    state, events, _ = advance(SPEC, before, 3, {}, canary_ready=True, now=NOW)
    assert (state["canaryStep"], events) == (0, [])  # the pass predates the step
    other_step = canary_state(lastResult="Pass", lastCheckStep=1, lastCheckTime=ago(10))
    assert advance(SPEC, other_step, 3, {}, canary_ready=True, now=NOW).state["canaryStep"] == 0
    nodata = canary_state(lastResult="NoData", lastCheckStep=0, lastCheckTime=ago(10))
    assert advance(SPEC, nodata, 3, {}, canary_ready=True, now=NOW).state["canaryStep"] == 0
    passed = canary_state(lastResult="Pass", lastCheckStep=0, lastCheckTime=ago(10))
    state, events, _ = advance(SPEC, passed, 3, {}, canary_ready=True, now=NOW)
    assert (state["canaryStep"], events[0][0]) == (1, "CanaryStep")


def test_the_pause_still_counts_when_the_check_passed():
    early = {
        **canary_state(lastResult="Pass", lastCheckStep=0, lastCheckTime=ago(5)),
        "stepStartedTime": ago(10),
    }
    assert advance(SPEC, early, 3, {}, canary_ready=True, now=NOW).state["canaryStep"] == 0


def test_failure_limit_read_from_status_rolls_back():
    results = [{"name": "errors", "result": "Fail", "value": 0.3, "message": "errors 0.3 > 0.05"}]
    two = canary_state(failedChecks=2, lastResult="Fail", lastCheckStep=0, results=results)
    held = advance(SPEC, two, 3, {}, canary_ready=True, now=NOW)
    assert held.rejection is None
    assert held.state["canaryVersion"] == 3
    # a restarted operator reads the third failure from status like any other pass
    three = canary_state(failedChecks=3, lastResult="Fail", lastCheckStep=0, results=results)
    state, events, rejection = advance(SPEC, three, 3, {}, canary_ready=True, now=NOW)
    assert state["stableVersion"] == 2
    assert (state["canaryVersion"], state["canary"], state["canaryStep"]) == (None, None, None)
    assert events[0][0] == "RolledBack"
    assert "errors 0.3 > 0.05" in events[0][1]
    assert rejection is not None
    assert (rejection.version, rejection.reason) == (3, "AnalysisFailed")
    assert "3 of 3 checks failed: errors 0.3 > 0.05" in rejection.message
    assert state["rolledBack"]["version"] == 3


def test_promote_annotation_overrides_failing_analysis():
    failing = canary_state(failedChecks=1, lastResult="Fail", lastCheckStep=0)
    state, events, _ = advance(SPEC, failing, 3, {PROMOTE: "true"}, canary_ready=True, now=NOW)
    assert (state["stableVersion"], events[0][0]) == (3, "Promoted")


def test_canary_pods_never_ready_roll_back_at_the_progress_deadline():
    waiting = {**canary_state(), "stepStartedTime": None, "canaryStartedTime": ago(299)}
    assert advance(SPEC, waiting, 3, {}, canary_ready=False, now=NOW).rejection is None
    late = {**waiting, "canaryStartedTime": ago(301)}
    state, events, rejection = advance(SPEC, late, 3, {}, canary_ready=False, now=NOW)
    assert rejection is not None
    assert rejection.reason == "ProgressDeadlineExceeded"
    assert state["canaryVersion"] is None
    assert state["stableVersion"] == 2
    assert "progressDeadline 5m" in events[0][1]


def test_a_canary_that_was_ready_and_lost_its_pods_rolls_back_at_the_deadline():
    """A canary whose step has begun and whose pods then stop being ready (a template
    change no node can hold) starts the deadline clock then, and is rolled back past it."""
    lost = canary_state()  # ready since its step began 2 minutes ago
    state, _, rejection = advance(SPEC, lost, 3, {}, canary_ready=False, now=NOW)
    assert rejection is None
    assert state["canaryNotReadySince"] == rfc3339(NOW)
    waiting = {**lost, "canaryNotReadySince": ago(299)}
    assert advance(SPEC, waiting, 3, {}, canary_ready=False, now=NOW).rejection is None
    late = {**lost, "canaryNotReadySince": ago(301)}
    state, _, rejection = advance(SPEC, late, 3, {}, canary_ready=False, now=NOW)
    assert rejection is not None
    assert rejection.reason == "ProgressDeadlineExceeded"
    assert (state["canaryVersion"], state["canaryNotReadySince"]) == (None, None)


def test_a_ready_canary_stops_the_deadline_clock():
    recovered = {**canary_state(), "canaryNotReadySince": ago(301)}
    state, _, rejection = advance(SPEC, recovered, 3, {}, canary_ready=True, now=NOW)
    assert rejection is None
    assert state["canaryNotReadySince"] is None


def test_a_new_canary_starts_with_fresh_analysis_and_its_clock():
    old = canary_state(failedChecks=2)
    state, _, _ = advance(SPEC, old, 4, {}, canary_ready=False, now=NOW)
    assert (state["canaryVersion"], state["canary"]) == (4, None)
    assert state["canaryStartedTime"] == state["canaryNotReadySince"] == rfc3339(NOW)


def test_promotion_clears_the_last_rollback():
    passed = canary_state(lastResult="Pass", lastCheckStep=1, lastCheckTime=ago(10))
    last = {**passed, "canaryStep": 1, "rolledBack": {"version": 3, "generation": 1}}
    state, events, _ = advance(SPEC, last, 3, {}, canary_ready=True, now=NOW)
    assert (state["stableVersion"], state["rolledBack"], events[0][0]) == (3, None, "Promoted")


def _mv(version: int, *conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "spec": {"version": version},
        "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]},
    }


def test_latest_skips_rejected_versions_and_pinned_serves_one():
    ready = {
        1: _mv(1),
        2: _mv(2),
        3: _mv(3, ("Rejected", "True")),
        4: _mv(4, ("Rejected", "False")),
    }
    rejected = rejected_versions(ready)
    assert rejected == {3}
    assert choose_version(SPEC, ready, rejected) == 4
    without_4 = {k: v for k, v in ready.items() if k != 4}
    assert choose_version(SPEC, without_4, rejected_versions(without_4)) == 2
    pinned = SPEC.model_copy(update={"version": SPEC.version.model_copy(update={})})
    pinned.version.policy, pinned.version.pinned = "Pinned", 3
    assert choose_version(pinned, ready, rejected) == 3
    # the pinned Rejected version goes out directly: no canary to roll it back again
    state, events, _ = advance(
        pinned, {"stableVersion": 2}, 3, {}, canary_ready=False, now=NOW, direct=True
    )
    assert (state["stableVersion"], state["canaryVersion"], events[0][0]) == (
        3,
        None,
        "RollingUpdate",
    )


# ------------------------------------------------------------------ the client's pure part


def test_parse_vector_keys_by_the_grouping_label():
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"class": "0"}, "value": [1, "40"]},
                {"metric": {"class": "1"}, "value": [1, "10"]},
            ],
        },
    }
    assert parse_vector(body, "class") == {"0": 40.0, "1": 10.0}
    assert parse_vector(body, "") == {"": 40.0, "1": 10.0}
    with pytest.raises(ValueError, match="bad_data"):
        parse_vector({"status": "error", "error": "bad_data: parse error"}, "")
    with pytest.raises(ValueError, match="instant vector"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}}, "")


def test_unconfigured_or_unreachable_prometheus_is_an_error_per_query():
    queries = a.plan(ERRORS, TARGET)
    none = PrometheusClient(OperatorSettings()).query(queries)
    assert set(none.errors) == set(queries)
    assert NO_PROMETHEUS in none.errors["requests"]
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = OperatorSettings(prometheus_url=f"http://127.0.0.1:{port}")
    refused = PrometheusClient(settings).query(queries)
    assert all(v is None for v in refused.vectors.values())
    assert refused.errors["requests"].startswith("ConnectError")


def _reconcile(generation: int, rolled_back: dict[str, Any] | None) -> Any:
    from kubeloop.operator.handlers.common import Reconcile

    body = {
        "metadata": {"name": "cancer", "namespace": "prod", "generation": generation, "uid": "u"},
        "status": {"rolledBack": rolled_back} if rolled_back else {},
    }
    return Reconcile(body)  # type: ignore[arg-type]


def test_degraded_is_computed_from_the_last_rollback_and_the_generation():
    from kubeloop.operator.handlers.modeldeployment import _degraded

    record = {"version": 3, "reason": "AnalysisFailed", "message": "m", "generation": 1}
    rec = _reconcile(1, record)
    _degraded(rec, {"rolledBack": record})
    (degraded,) = rec.status["conditions"]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "AnalysisFailed",
        "m",
    )
    changed = _reconcile(2, record)  # the spec changed since the rollback
    _degraded(changed, {"rolledBack": record})
    assert changed.status["conditions"][0]["status"] == "False"
    assert changed.status["rolledBack"] is None
    healthy = _reconcile(1, None)
    _degraded(healthy, {"rolledBack": None})
    assert healthy.status["conditions"][0]["reason"] == "AsExpected"
