"""Every query of the Grafana dashboards against a real Prometheus scraping real serving
processes (stable and canary, with traffic) and the operator, through a canary that is
rolled back: each query parses and returns series, except those for events this test does
not cause, listed in NOT_CAUSED with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canary_lab import MD, canary_of, lab, train
from kubetest import wait_for
from test_drift_loop import FEATURES, data_csv, model_dir

from kubeloop.operator.dashboards import dashboards

pytestmark = pytest.mark.cluster
__all__ = ["data_csv", "model_dir"]  # module fixtures shared with the drift loop

#: (dashboard uid, panel or annotation title, query ref) -> why it has no series here
NOT_CAUSED = {
    ("kubeloop-deployment", "Online metric vs floor", "A"): "no feedback labels are posted",
    ("kubeloop-deployment", "Online metric vs floor", "B"): "no online-metric floor is set",
    ("kubeloop-deployment", "Requests in flight and refused", "B"): "no request is refused",
    ("kubeloop-deployment", "Canary forwards by outcome", "A"): "the lab sends to the canary "
    "directly, its stable forwards nothing (test_canary_promql.py reads this query from a "
    "forwarding stable)",
    ("kubeloop-deployment", "Retrains", "-"): "no retrain is created",
    ("kubeloop-operator", "Retrains", "-"): "no retrain is created",
}


def queries() -> dict[tuple[str, str, str], str]:
    """Every panel target and annotation query of every dashboard, by (uid, title, ref)."""
    found: dict[tuple[str, str, str], str] = {}
    for dashboard in dashboards().values():
        for panel in dashboard.panels:
            for target in panel.targets:
                found[(dashboard.uid, panel.title, target.ref_id)] = target.expr
        for annotation in dashboard.annotations["list"]:
            found[(dashboard.uid, annotation.name, "-")] = annotation.expr
    return found


def filled(expr: str, namespace: str) -> str:
    """The query as Grafana sends it for this deployment (variables substituted)."""
    values = {"namespace": namespace, "deployment": MD, "__rate_interval": "30s"}
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


def series(prom: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code != 400, f"{expr}: {answer.text}"  # a query that does not parse
    return answer.json()["data"]["result"] if answer.status_code == 200 else []


@pytest.fixture(scope="module")
def flipped_dir(data_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(data_csv, tmp_path_factory.mktemp("flipped") / "model", flip=True)


def test_every_dashboard_query_returns_series(
    kubeconfig, api_client, namespace, tmp_path, model_dir, flipped_dir, data_csv
):
    assert set(NOT_CAUSED) <= set(queries()), "NOT_CAUSED names a query that is gone"
    rows = pd.read_csv(data_csv)[FEATURES].iloc[:50]
    with (
        lab(kubeconfig, api_client, namespace, tmp_path, model_dir) as run,
        canary_of(run, flipped_dir, rows),
    ):
        prom = f"http://127.0.0.1:{run.prometheus_port}"
        wait_for(lambda: run.status().get("rolledBack"), "the canary to be rolled back",
                 timeout=180, state=run.status)  # fmt: skip
        expected = {k: filled(v, namespace) for k, v in queries().items() if k not in NOT_CAUSED}
        missing = dict(expected)

        def all_answered() -> bool:
            for key in list(missing):
                if series(prom, missing[key]):
                    del missing[key]
            return not missing

        wait_for(all_answered, "every dashboard query to return series", timeout=120,
                 state=lambda: sorted(missing))  # fmt: skip
        for key in NOT_CAUSED:  # they parse, even without series
            series(prom, filled(queries()[key], namespace))
