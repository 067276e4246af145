"""The whole loop on a real node: pods run as real containers from the local images.

``kubeloop.devcluster.demo.Demo`` drives it exactly as ``make demo`` does (cluster with a
real node, images loaded into its containerd, the Helm chart, ``examples/``, a second
version through the canary steps, drifted traffic through Prometheus and Alertmanager
to the operator's receiver, the retrained version promoted, then a model trained on
shuffled labels canaried under analysis and rolled back); this test checks what the run
saw. Every wait inside is bounded and prints the namespace's objects, events and
the logs of pods that are not running when it gives up.

Needs root (containers, iptables, a bridge) and Docker Engine for the image builds
(``hack/images.sh`` installs and starts it); ``make e2e`` runs this file alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeloop.devcluster import realnode
from kubeloop.devcluster.demo import Demo, DemoError, Summary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NAME = "e2e"


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    if os.geteuid() != 0:
        pytest.fail(
            "make e2e needs root: the real node runs containerd, iptables rules and a bridge",
            pytrace=False,
        )
    owner = realnode.owner()
    if owner not in (None, NAME):
        pytest.fail(f"the real node serves cluster {owner!r}: make demo-down (or cluster down)")
    run = Demo(NAME, namespace="kubeloop-e2e", say=print, canary_pause="20s")
    try:
        yield run
    finally:
        run.down()


@pytest.fixture(scope="module")
def summary(demo: Demo) -> Summary:
    try:
        return demo.run()
    except DemoError as err:
        pytest.fail(str(err), pytrace=False)


def test_four_versions_trained_by_real_jobs(summary: Summary) -> None:
    assert sorted(summary.versions) == [1, 2, 3, 4]
    for number in (1, 2, 3):
        # the examples' gate (f1 >= 0.9, roc_auc >= 0.95) let each one through
        assert summary.versions[number]["f1"] >= 0.9, summary.versions[number]
    # shuffled labels, no gate: a version that learned nothing was published anyway
    assert summary.versions[4]["roc_auc"] < 0.7, summary.versions[4]
    assert summary.versions[1]["trainingJob"] == "breast-cancer-rf"
    assert summary.versions[3]["trainingJob"] == summary.retrain_job


def test_predictions_through_the_service(summary: Summary) -> None:
    # examples/requests/breast-cancer.json: two malignant tumours (class 0)
    assert summary.predictions == [0, 0]


def test_canary_split_is_seen_in_responses(summary: Summary) -> None:
    split = summary.canary_split[2]
    assert sorted(split) == [20, 50]
    for weight, seen in split.items():
        # both versions answer while the canary runs (the old weight lingers for the
        # seconds the routing ConfigMap takes to reach the stable pods)
        assert seen["1"] > 0, (weight, seen)
        assert seen["2"] > 0, (weight, seen)
        assert set(seen) <= {"1", "2"}
    at_50 = split[50]["2"] / sum(split[50].values())
    at_20 = split[20]["2"] / sum(split[20].values())
    assert at_20 < at_50 < 0.75


def test_drift_alert_retrains_and_the_new_version_is_promoted(demo: Demo, summary: Summary) -> None:
    assert summary.drift_score is not None
    assert summary.drift_score > 0.2
    assert summary.retrain_trigger == "alert"
    assert summary.final_stable == 3
    status = demo.status("ModelDeployment", "breast-cancer")
    assert status["stableVersion"] == 3
    assert not status.get("canaryVersion")
    assert status["lastRetrain"]["trainingJob"] == summary.retrain_job
    # only the promoted version is left serving (pods on their way out are not)
    pods = demo.get("pods", None, "-l", "kubeloop.io/model-deployment=breast-cancer")["items"]
    running = [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    assert running
    assert {p["metadata"]["labels"]["app.kubernetes.io/version"] for p in running} == {"3"}


def test_shuffled_labels_canary_is_rolled_back(demo: Demo, summary: Summary) -> None:
    assert summary.rolled_back is not None
    number, check = summary.rolled_back
    assert number == 4
    name, value, op, bound = check.split()
    assert (name, op, bound) == ("shift", ">", "0.1"), check
    assert float(value) > 0.1
    # the good version kept answering, alone
    assert set(summary.after_rollback) == {"3"}, summary.after_rollback
    status = demo.status("ModelDeployment", "breast-cancer")
    assert (status["stableVersion"], status.get("canaryVersion")) == (3, None)
    assert status["rolledBack"]["reason"] == "AnalysisFailed"
    mv = demo.status("ModelVersion", "breast-cancer-v4")
    rejected = next(c for c in mv["conditions"] if c["type"] == "Rejected")
    assert (rejected["status"], rejected["reason"]) == ("True", "AnalysisFailed")


def test_kubeloop_status_shows_the_loop_at_the_end(summary: Summary) -> None:
    loop = summary.loop
    assert loop is not None
    assert [v.version for v in loop.versions] == [4, 3, 2, 1]
    rejected = loop.versions[0].rejected
    assert rejected is not None
    assert "version 4 rolled back" in rejected
    assert loop.versions[1].served_by == {"breast-cancer": "stable"}
    (deployment,) = loop.deployments
    assert (deployment.stable, deployment.canary) == (3, None)
    assert loop.drift, loop.drift_note  # read from the demo's Prometheus
    assert "Model versions" in summary.loop_text


def test_the_drift_report_is_written_through_the_service_proxy(summary: Summary) -> None:
    report = summary.drift_report
    assert report is not None
    assert len(report.features) == 30  # every breast-cancer feature, each with its bars
    assert all(f.bins and len(f.bins) == len(f.live) for f in report.features)
    page = Path(summary.drift_report_path).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'data-feature="mean radius"' in page
