"""Canary analysis: which PromQL to ask, what the answers mean, and what to do next.

Everything here is pure. :func:`plan` turns one ``spec.canary.analysis.metrics[]``
entry into instant queries; :func:`reading` turns their answers into one value
(or no data, with the reason); :func:`judge` compares it with the bounds; and
:func:`analyse` folds a check into ``status.canary.analysis`` — the only place
the analysis keeps state, so a restarted operator counts on from there. The
Prometheus HTTP call is the one side effect and lives in :mod:`.prometheus`.

Builtins read the canary pods' own series, told apart by the scrape config's
target labels (``namespace``, ``model_deployment``, ``role``) and the server's
``version`` label, so they stay valid whatever routes the traffic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeloop.api.base import duration_seconds
from kubeloop.api.v1alpha1 import Analysis, AnalysisMetric, CheckOutcome
from kubeloop.operator.timestamps import parse, rfc3339

#: One query's answer: the value of each series, keyed by the grouping label's value
#: ("" for an ungrouped sum); None when the query itself failed (the reason beside it).
Vector = dict[str, float]
#: Added to every bucket's share before the PSI's logarithm (an empty bucket is not infinite).
PSI_EPSILON = 1e-4
#: The builtins the serving pods do not export yet: accepted, read as no data.
UNMEASURED = {
    "onlineMetric": "the online metric per canary version is not exported by the serving pods yet",
}
_TEMPLATE = re.compile(r"\{\{\s*(namespace|deployment|canaryVersion|stableVersion)\s*\}\}")


@dataclass(frozen=True)
class Target:
    """Whose series a check reads: validated names and version numbers only."""

    namespace: str
    deployment: str
    canary_version: int
    stable_version: int
    task: str = "classification"

    def selector(self, role: str) -> str:
        version = self.canary_version if role == "canary" else self.stable_version
        return (
            f'namespace="{self.namespace}",model_deployment="{self.deployment}",'
            f'role="{role}",version="{version}"'
        )


@dataclass(frozen=True)
class Query:
    """One instant query; ``by`` names the label its vector is keyed by ("" for a sum)."""

    expr: str
    by: str = ""


@dataclass(frozen=True)
class Reading:
    """One metric's value, or no data and why."""

    value: float | None
    reason: str = ""


@dataclass(frozen=True)
class Check:
    """One metric's verdict at one check."""

    name: str
    result: CheckOutcome
    value: float | None
    message: str

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "result": self.result, "message": self.message}
        if self.value is not None:
            out["value"] = round(self.value, 6)
        return out


def render(template: str, target: Target) -> str:
    """A user query with ``{{ namespace }}`` and friends substituted (values are validated
    DNS labels and integers, so nothing substituted can end a PromQL string)."""
    values = {
        "namespace": target.namespace,
        "deployment": target.deployment,
        "canaryVersion": str(target.canary_version),
        "stableVersion": str(target.stable_version),
    }
    return _TEMPLATE.sub(lambda m: values[m.group(1)], template)


def requests_query(target: Target, window: str) -> Query:
    """The canary pods' requests in the window (for ``minRequests``)."""
    return Query(f"sum(increase(kubeloop_requests_total{{{target.selector('canary')}}}[{window}]))")


def _unreachable(target: Target, window: str) -> Query:
    """Forwarded requests that never reached the canary pods, as the stable pods count them."""
    sel = (
        f'namespace="{target.namespace}",model_deployment="{target.deployment}",'
        f'version="{target.canary_version}",outcome="unreachable"'
    )
    return Query(f"sum(increase(kubeloop_canary_requests_total{{{sel}}}[{window}]))")


def _compared(target: Target, results: str, window: str) -> Query:
    """Mirrored requests the stable pods compared with the canary version's answers, summed
    over the pods (the counter, not each pod's agreement gauge, so replicas add up)."""
    sel = (
        f'namespace="{target.namespace}",model_deployment="{target.deployment}",'
        f'version="{target.canary_version}",result=~"{results}"'
    )
    return Query(f"sum(increase(kubeloop_shadow_compared_total{{{sel}}}[{window}]))")


def _p99(target: Target, role: str, window: str) -> Query:
    buckets = f"kubeloop_request_duration_seconds_bucket{{{target.selector(role)}}}"
    return Query(f"histogram_quantile(0.99, sum by (le) (rate({buckets}[{window}])))")


def _distribution(target: Target, role: str, window: str) -> Query:
    if target.task == "regression":
        series = f"kubeloop_prediction_value_bucket{{{target.selector(role)}}}"
        return Query(f"sum by (le) (increase({series}[{window}]))", by="le")
    series = f"kubeloop_predictions_total{{{target.selector(role)}}}"
    return Query(f"sum by (class) (increase({series}[{window}]))", by="class")


def plan(metric: AnalysisMetric, target: Target) -> dict[str, Query]:
    """The instant queries one metric needs, by key (``requests`` is always among them)."""
    w = metric.window
    queries = {"requests": requests_query(target, w)}
    if metric.query is not None:
        queries["value"] = Query(render(metric.query, target))
    elif metric.builtin == "errorRate":
        sel = target.selector("canary")
        errors = f'kubeloop_requests_total{{{sel},code=~"5.."}}'
        queries["errors"] = Query(f"sum(increase({errors}[{w}]))")
        queries["unreachable"] = _unreachable(target, w)
    elif metric.builtin == "latencyP99Ratio":
        queries["canary"] = _p99(target, "canary", w)
        queries["stable"] = _p99(target, "stable", w)
    elif metric.builtin == "driftScore":
        sel = target.selector("canary")
        queries["value"] = Query(f"max(max_over_time(kubeloop_drift_score{{{sel}}}[{w}]))")
    elif metric.builtin == "shadowAgreement":
        queries["agree"] = _compared(target, "agree", w)
        queries["compared"] = _compared(target, "agree|disagree", w)
    elif metric.builtin == "predictionShift":
        queries["canary"] = _distribution(target, "canary", w)
        queries["stable"] = _distribution(target, "stable", w)
    return queries


def psi(canary: Vector, stable: Vector) -> float | None:
    """Population stability index of the canary's distribution against the stable one's
    over the union of their bins; None when either side has nothing."""
    bins = sorted(set(canary) | set(stable))
    c_total, s_total = sum(canary.values()), sum(stable.values())
    if c_total <= 0 or s_total <= 0:
        return None
    out = 0.0
    for b in bins:
        p = canary.get(b, 0.0) / c_total + PSI_EPSILON
        q = stable.get(b, 0.0) / s_total + PSI_EPSILON
        out += (p - q) * math.log(p / q)
    return out


def bucket_counts(cumulative: Vector) -> Vector:
    """Per-bucket counts from a Prometheus histogram's cumulative ``le`` buckets."""
    ordered = sorted(cumulative.items(), key=lambda kv: float(kv[0]))
    out: Vector = {}
    previous = 0.0
    for le, count in ordered:
        out[le] = max(0.0, count - previous)
        previous = count
    return out


def _scalar(answers: dict[str, Vector], key: str, zero: bool = False) -> float | None:
    """The single value of an ungrouped answer (0 for an empty one when ``zero``)."""
    values = answers.get(key) or {}
    if not values:
        return 0.0 if zero else None
    value = next(iter(values.values()))
    return None if math.isnan(value) else value


def _builtin(metric: AnalysisMetric, answers: dict[str, Vector], task: str) -> Reading:
    """The value of a builtin from its answers (requests already checked)."""
    if metric.builtin in UNMEASURED:
        return Reading(None, UNMEASURED[metric.builtin])
    if metric.builtin == "errorRate":
        served = _scalar(answers, "requests", zero=True) or 0.0
        lost = _scalar(answers, "unreachable", zero=True) or 0.0
        errors = _scalar(answers, "errors", zero=True) or 0.0
        if served + lost <= 0:
            return Reading(None, "no canary requests in the window")
        return Reading((errors + lost) / (served + lost))
    if metric.builtin == "latencyP99Ratio":
        canary, stable = _scalar(answers, "canary"), _scalar(answers, "stable")
        if canary is None or stable is None or stable <= 0:
            return Reading(None, "no latency histogram of both versions in the window")
        return Reading(canary / stable)
    if metric.builtin == "shadowAgreement":
        agree, compared = _scalar(answers, "agree", zero=True), _scalar(answers, "compared")
        if not compared:
            return Reading(None, "no mirrored comparisons with the canary version")
        return Reading((agree or 0.0) / compared)
    if metric.builtin == "predictionShift":
        new, old = answers.get("canary") or {}, answers.get("stable") or {}
        if task == "regression":
            new, old = bucket_counts(new), bucket_counts(old)
        value = psi(new, old)
        return Reading(value, "" if value is not None else "no predictions of both versions")
    value = _scalar(answers, "value")
    return Reading(value, "" if value is not None else "no drift score from the canary pods")


def reading(
    metric: AnalysisMetric,
    answers: dict[str, Vector | None],
    errors: dict[str, str],
    min_requests: int,
    task: str = "classification",
) -> Reading:
    """One metric's value from its queries' answers; no data when a query failed, the
    canary served fewer than ``min_requests`` in the window, or the answer is empty."""
    if errors:
        key, why = sorted(errors.items())[0]
        return Reading(None, f"query {key} failed: {why}")
    got = {k: v for k, v in answers.items() if v is not None}
    requests = _scalar(got, "requests", zero=True) or 0.0
    lost = _scalar(got, "unreachable", zero=True) or 0.0
    if requests + lost < min_requests:
        return Reading(
            None, f"{requests + lost:g} canary requests in {metric.window} (< {min_requests})"
        )
    if metric.query is not None:
        series = got.get("value") or {}
        if len(series) != 1:
            return Reading(None, f"the query returned {len(series)} series (want 1)")
        value = _scalar(got, "value")
        return Reading(value, "" if value is not None else "the query returned NaN")
    return _builtin(metric, got, task)


def judge(metric: AnalysisMetric, read: Reading) -> Check:
    """Compare a reading with the metric's bounds."""
    if read.value is None:
        return Check(metric.name, "NoData", None, f"{metric.name}: no data ({read.reason})")
    v = read.value
    if metric.max is not None and v > metric.max:
        return Check(metric.name, "Fail", v, f"{metric.name} {v:.4g} > {metric.max:g}")
    if metric.min is not None and v < metric.min:
        return Check(metric.name, "Fail", v, f"{metric.name} {v:.4g} < {metric.min:g}")
    return Check(metric.name, "Pass", v, f"{metric.name} {v:.4g} within bounds")


def check_due(analysis: Analysis, state: dict[str, Any], weight: int, now: datetime) -> bool:
    """Whether a check runs now: the canary has its weight, and ``interval`` has passed since
    the last check (or this step has none yet)."""
    if weight <= 0 or state.get("stepStartedTime") is None:
        return False
    current = analysis_state(state)
    last = parse(current.get("lastCheckTime"))
    if last is None or current.get("lastCheckStep") != state.get("canaryStep"):
        return True
    return (now - last).total_seconds() >= duration_seconds(analysis.interval)


def analysis_state(state: dict[str, Any]) -> dict[str, Any]:
    """``status.canary.analysis`` (empty before the first check)."""
    return dict(((state.get("canary") or {}).get("analysis")) or {})


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check over every metric."""

    result: CheckOutcome
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.result == "Fail"]

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.result == "NoData"]

    def summary(self) -> str:
        shown = self.failed or self.missing or self.checks
        return "; ".join(c.message for c in shown)


def verdict(analysis: Analysis, checks: list[Check]) -> Verdict:
    """Fail when any metric failed (or had no data under ``onNoData: Fail``); no data when
    one had none under ``Pause``; else pass."""
    if any(c.result == "Fail" for c in checks):
        return Verdict("Fail", checks)
    if any(c.result == "NoData" for c in checks):
        return Verdict("Fail" if analysis.on_no_data == "Fail" else "NoData", checks)
    return Verdict("Pass", checks)


def analyse(
    analysis: Analysis, state: dict[str, Any], result: Verdict, weight: int, now: datetime
) -> dict[str, Any]:
    """The next ``status.canary`` after a check: counts a failure, records the readings."""
    current = analysis_state(state)
    failed = int(current.get("failedChecks") or 0) + (1 if result.result == "Fail" else 0)
    return {
        "analysis": {
            "failedChecks": failed,
            "lastCheckTime": rfc3339(now),
            "lastCheckStep": state.get("canaryStep"),
            "lastCheckWeight": weight,
            "lastResult": result.result,
            "results": [c.to_status() for c in result.checks],
        }
    }


def step_passed(analysis: Analysis | None, state: dict[str, Any]) -> bool:
    """Whether the step may advance as far as analysis goes: the latest check was taken at
    this step, after its weight reached the pods, and passed."""
    if analysis is None:
        return True
    current = analysis_state(state)
    checked, started = parse(current.get("lastCheckTime")), parse(state.get("stepStartedTime"))
    return (
        current.get("lastResult") == "Pass"
        and current.get("lastCheckStep") == state.get("canaryStep")
        and checked is not None
        and started is not None
        and checked >= started
    )


def exhausted(analysis: Analysis | None, state: dict[str, Any]) -> str | None:
    """The rollback message once ``failureLimit`` checks failed, else None."""
    if analysis is None:
        return None
    current = analysis_state(state)
    failed = int(current.get("failedChecks") or 0)
    if failed < analysis.failure_limit:
        return None
    failing = [r for r in current.get("results") or [] if r.get("result") != "Pass"]
    why = "; ".join(str(r.get("message")) for r in failing) or "checks failed"
    return f"{failed} of {analysis.failure_limit} checks failed: {why}"
