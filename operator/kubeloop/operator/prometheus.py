"""The one side effect of canary analysis: instant queries to Prometheus over HTTP.

Its address, bearer token file and CA file are operator settings (chart values),
never fields of a deployment: a deployment's author cannot point the operator
anywhere. Every failure (unreachable, HTTP error, a Prometheus error, a result of
the wrong shape) becomes the query's error text, which the analysis reads as no
data naming the metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kubeloop.api.v1alpha1 import Analysis
from kubeloop.operator.analysis import (
    Query,
    Target,
    Vector,
    Verdict,
    judge,
    plan,
    reading,
    verdict,
)
from kubeloop.operator.settings import OperatorSettings

NO_PROMETHEUS = "no Prometheus configured (operator setting KUBELOOP_PROMETHEUS_URL)"


@dataclass(frozen=True)
class Answers:
    """The vectors of the queries that answered and the errors of those that did not."""

    vectors: dict[str, Vector | None]
    errors: dict[str, str]


def parse_vector(body: Any, by: str) -> Vector:
    """A ``/api/v1/query`` answer as ``{label value: number}`` (``by`` "" keys by "")."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise ValueError(f"Prometheus answered an error: {error or body!r}"[:300])
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list):
        return {"": float(result[1])}
    if kind != "vector" or not isinstance(result, list):
        raise ValueError(f"want an instant vector, got {kind!r}")
    out: Vector = {}
    for index, sample in enumerate(result):
        value = float(sample["value"][1])
        if by:  # grouped: one entry per label value
            key = str((sample.get("metric") or {}).get(by, ""))
            out[key] = out.get(key, 0.0) + value
        else:  # ungrouped: every series kept, so a multi-series answer shows as such
            out[str(index) if index else ""] = value
    return out


class PrometheusClient:
    """Instant queries against the configured Prometheus."""

    def __init__(self, settings: OperatorSettings) -> None:
        self._url = settings.prometheus_url
        self._token_file = settings.prometheus_bearer_token_file
        self._verify: str | bool = (
            str(settings.prometheus_ca_file) if settings.prometheus_ca_file else True
        )
        self._timeout = settings.prometheus_timeout_seconds

    def _headers(self) -> dict[str, str]:
        if self._token_file is None:
            return {}
        token = Path(self._token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def query(self, queries: dict[str, Query]) -> Answers:
        """Run each query; a failure is recorded against its key, never raised."""
        if not self._url:
            return Answers({k: None for k in queries}, {k: NO_PROMETHEUS for k in queries})
        vectors: dict[str, Vector | None] = {}
        errors: dict[str, str] = {}
        url = f"{self._url.rstrip('/')}/api/v1/query"
        try:
            headers = self._headers()
        except OSError as err:
            return Answers({k: None for k in queries}, {k: f"token file: {err}" for k in queries})
        with httpx.Client(timeout=self._timeout, verify=self._verify, headers=headers) as http:
            for key, q in queries.items():
                try:
                    response = http.get(url, params={"query": q.expr})
                    vectors[key] = parse_vector(response.json(), q.by)
                except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as err:
                    vectors[key] = None
                    errors[key] = f"{type(err).__name__}: {err}"[:300]
        return Answers(vectors, errors)


def measure(client: PrometheusClient, spec: Analysis, target: Target) -> Verdict:
    """One check: every metric's queries asked, read and judged (the only I/O is here)."""
    checks = []
    for metric in spec.metrics:
        answers = client.query(plan(metric, target))
        read = reading(metric, answers.vectors, answers.errors, spec.min_requests, target.task)
        checks.append(judge(metric, read))
    return verdict(spec, checks)
