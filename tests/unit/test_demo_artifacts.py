"""The demo's closing lines point at the drift report it wrote and at the dashboards."""

from __future__ import annotations

from pathlib import Path

from kubeloop.devcluster.demo import Summary, artifact_lines
from kubeloop.driftreport import DriftReport, FeatureDrift

ROOT = Path(__file__).resolve().parents[2]


def feature(name: str, score: float) -> FeatureDrift:
    return FeatureDrift(
        name=name, kind="numeric", bins=["a"], reference=[1.0], live=[1.0],
        score=score, threshold=0.2, drifted=score > 0.2,
    )  # fmt: skip


def test_the_lines_name_the_report_and_an_existing_dashboards_folder():
    report = DriftReport(
        model="breast-cancer", version="v", threshold=0.2, window=1000, rows=10,
        generated="2026-01-01T00:00:00Z", features=[feature("a", 0.5), feature("b", 0.1)],
    )  # fmt: skip
    summary = Summary(drift_report=report, drift_report_path="/tmp/x/drift-report.html")
    report_line, dashboards = artifact_lines(summary, ROOT)
    assert report_line == "Drift report (1 of 2 features drifted): /tmp/x/drift-report.html"
    folder = Path(dashboards.rpartition(": ")[2])
    assert folder == ROOT / "charts" / "kubeloop" / "dashboards"
    assert sorted(p.name for p in folder.glob("*.json")), folder


def test_without_a_report_only_the_dashboards_are_named():
    (line,) = artifact_lines(Summary(), ROOT)
    assert line.startswith("Grafana dashboards (JSON): ")
