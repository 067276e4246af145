"""The status view (kubeloop status): built from objects as the API server lists them."""

from __future__ import annotations

import json

from rich.console import Console

from kubeloop.operator.loopview import FeatureDrift, Objects, build, models_in, render
from kubeloop.operator.status_cli import dump
from loop_objects import DIGEST, loop


def objects() -> Objects:
    return Objects(**loop())


def text(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_view_follows_the_loop_of_one_model():
    view = build("breast-cancer", "ml", objects())
    assert [d.name for d in view.datasets] == ["breast-cancer"]
    assert view.datasets[0].version == DIGEST[:19]
    # newest TrainingJob first, with who made it and the gate's verdict
    assert [t.name for t in view.trainings] == ["breast-cancer-retrain-1", "breast-cancer-rf"]
    assert view.trainings[0].trigger == "retrain of breast-cancer"
    assert view.trainings[0].verdict == "accuracy 0.612 < champion 0.960 - 0.01"
    assert view.trainings[1].trigger == "by hand"
    # newest version first, with what serves it and what rejected it
    assert [v.version for v in view.versions] == [3, 2, 1]
    assert view.versions[2].served_by == {"breast-cancer": "stable"}
    assert view.versions[1].served_by == {"breast-cancer": "canary"}
    assert view.versions[0].rejected == "3 of 3 checks failed: shift 0.9154 > 0.1"
    assert view.versions[0].image == "kubeloop-trainer:0.1.0"
    (md,) = view.deployments
    assert (md.stable, md.canary, md.weight) == (1, 2, 10)
    assert md.analysis == "Fail, 1 failed: shift 0.5 > 0.1"
    assert md.last_retrain == "breast-cancer-retrain-1 (alert, 2026-12-03 07:30)"


def test_other_models_and_the_limit():
    assert models_in(objects()) == ["breast-cancer"]
    assert build("other", "ml", objects()).versions == []
    assert len(build("breast-cancer", "ml", objects(), limit=1).versions) == 1


def test_drift_is_shown_most_drifted_first_and_over_threshold_marked():
    drift = [
        FeatureDrift(deployment="breast-cancer", feature="a", score=0.05, threshold=0.2),
        FeatureDrift(deployment="breast-cancer", feature="b", score=0.7, threshold=0.2),
    ]
    view = build("breast-cancer", "ml", objects(), drift)
    assert [d.feature for d in view.drift] == ["b", "a"]
    shown = text(render(view))
    for expected in (
        "Datasets",
        "Training jobs",
        "Model versions",
        "Deployments",
        "Drift (live, stable pods)",
        "2 (breast-cancer-v2)",
        "breast-cancer (canary)",
        "0.700",
    ):
        assert expected in shown, expected
    noted = build("breast-cancer", "ml", objects(), drift_note="not read (give --prometheus URL)")
    assert "Drift: not read (give --prometheus URL)" in text(render(noted))


def test_json_and_yaml_for_scripts():
    view = build("breast-cancer", "ml", objects())
    (data,) = json.loads(dump([view], "json"))
    assert data["model"] == "breast-cancer"
    assert data["deployments"][0]["canary"] == 2
    assert "model: breast-cancer" in dump([view], "yaml")


def test_short_keeps_the_digest_format():
    from kubeloop.operator.loopview import short

    assert short("sha256:" + "ab" * 32) == "sha256:" + "ab" * 6
    assert short("sha256-v2:" + "cd" * 32) == "sha256-v2:" + "cd" * 6
    assert short(None) is None
