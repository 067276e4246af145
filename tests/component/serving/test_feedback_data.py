"""Feedback as data: a real ``kubeloop serve`` logs predictions and the feedback posted to
it; ``kubeloop snapshot --source feedback:<folder>`` joins them into a labelled table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from serving_helpers import KUBELOOP, free_port, serving, start_server, wait_for

FEATURES = ["age", "income", "city"]


def log_lines(folder: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(folder.glob("*.jsonl*")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def snapshot(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "KUBELOOP_TERMINATION_LOG": str(out.parent / "termination")}
    args = ["snapshot", "--source", f"feedback:{source}", "--target", "outcome"]
    proc = subprocess.run(
        [str(KUBELOOP), *args, "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["stderr"] = proc.stderr
    return summary


@pytest.fixture(scope="module")
def logged(mixed_model, data_dir, tmp_path_factory):
    """The prediction log of 10 one-row requests, a three-row one and an unlabelled one,
    and the feedback posted for them (one id twice, one id never served); small files, so
    the log is rotated several times."""
    folder = tmp_path_factory.mktemp("claim")
    frame = pd.read_csv(data_dir / "mixed.csv").dropna().reset_index(drop=True)
    env = {
        "KUBELOOP_SERVING_PREDICTION_LOG_INPUTS": "1",
        "KUBELOOP_SERVING_PREDICTION_LOG_MAX_BYTES": "2048",
        "KUBELOOP_SERVING_PREDICTION_LOG_KEEP": "50",
    }
    log = folder / "mixed-7d9f-abcde.jsonl"
    with serving(mixed_model, "--name", "mixed", "--prediction-log", str(log), env=env) as server:
        with server.client() as http:

            def infer(rid: str, rows: pd.DataFrame) -> None:
                body = {"instances": rows[FEATURES].to_dict(orient="records")}
                r = http.post("/v1/models/mixed:predict", json=body, headers={"x-request-id": rid})
                assert r.status_code == 200, r.text

            for i in range(10):
                infer(f"one-{i}", frame.iloc[i : i + 1])
            infer("three", frame.iloc[10:13])
            infer("unlabelled", frame.iloc[13:14])
            truth = frame["outcome"].tolist()
            wrong = "no" if truth[0] == "yes" else "yes"
            items = [{"id": "one-0", "truth": wrong}]  # corrected below: the last label wins
            items += [{"id": f"one-{i}", "truth": truth[i]} for i in range(10)]
            items += [{"id": "three", "truth": truth[10:13]}, {"id": "never-served", "truth": "no"}]
            r = http.post("/v2/models/mixed/feedback", json={"feedback": items[:1]})
            assert r.json()["matched"] == 1, r.text
            r = http.post("/v2/models/mixed/feedback", json={"feedback": items[1:]})
            assert (r.json()["matched"], r.json()["duplicates"]) == (12, 1), r.text
        wait_for(
            "the 13 feedback lines in the log",
            lambda: sum(1 for x in log_lines(folder) if x.get("kind") == "feedback") == 13,
        )
    return folder, frame


def test_the_log_carries_feedback_lines_beside_the_predictions(logged):
    folder, frame = logged
    lines = log_lines(folder)
    assert len(list(folder.glob("*.jsonl.*"))) >= 2  # rotated
    labels = [x for x in lines if x.get("kind") == "feedback"]
    assert {x["id"] for x in labels} == {*(f"one-{i}" for i in range(10)), "three", "never-served"}
    three = next(x for x in labels if x["id"] == "three")
    assert three["truth"] == frame["outcome"].tolist()[10:13]  # as sent: one value per row
    assert all(x["model"] == "mixed" and x["time"].endswith("Z") for x in labels)
    predictions = [x for x in lines if "kind" not in x]
    assert len(predictions) == 14


def test_snapshot_joins_the_log_into_a_labelled_table_with_a_stable_digest(logged, tmp_path):
    folder, frame = logged
    first = snapshot(folder, tmp_path / "a" / "out")
    assert first["rows"] == 13
    assert "unlabelled=1" in first["stderr"]
    table = pq.read_table(first["snapshot_uri"].removeprefix("file://")).to_pandas()
    assert list(table.columns) == [*FEATURES, "outcome"]
    expected = frame.iloc[:13].reset_index(drop=True)
    assert table["city"].tolist() == expected["city"].tolist()
    assert table["outcome"].tolist() == expected["outcome"].tolist()  # one-0's corrected label
    assert table["age"].to_numpy() == pytest.approx(expected["age"].to_numpy(), rel=1e-6)
    assert table["income"].to_numpy() == pytest.approx(expected["income"].to_numpy(), rel=1e-6)
    # the same log elsewhere, its files renamed (read in another order): the same version
    moved = tmp_path / "moved" / "pods"
    moved.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, moved / f"z-{path.name}")
    again = snapshot(moved.parent, tmp_path / "b" / "out")
    assert again["digest"] == first["digest"]
    # a version column, and a byte bound that keeps only the newest rows
    versioned = snapshot(folder, tmp_path / "c" / "out", "--version-column", "model_version")
    columns = {c["name"] for c in versioned["columns"]}
    assert columns == {*FEATURES, "outcome", "model_version"}
    small = snapshot(folder, tmp_path / "d" / "out", "--max-bytes", "1500")
    assert 0 < small["rows"] < 13
    assert "over_size=" in small["stderr"]


def test_a_feedback_source_without_a_target_or_with_no_label_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [str(KUBELOOP), "snapshot", "--source", f"feedback:{empty}", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBELOOP_TERMINATION_LOG": str(tmp_path / "t")},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "a feedback source needs --target" in proc.stderr
    proc = subprocess.run(
        [str(KUBELOOP), "snapshot", "--source", f"feedback:{empty}", "--target", "y",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBELOOP_TERMINATION_LOG": str(tmp_path / "t")},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no labelled prediction" in proc.stderr


def test_across_two_pods_each_label_is_logged_once_by_the_pod_that_answered(
    mixed_model, data_dir, tmp_path
):
    folder = tmp_path / "claim"
    folder.mkdir()
    frame = pd.read_csv(data_dir / "mixed.csv").dropna().reset_index(drop=True)
    ports = [free_port(), free_port()]
    env = {
        "KUBELOOP_SERVING_FEEDBACK_PEERS": ",".join(f"127.0.0.1:{p}" for p in ports),
        "KUBELOOP_SERVING_POD_IP": "127.0.0.1",
        "KUBELOOP_SERVING_PREDICTION_LOG_INPUTS": "1",
    }
    with ExitStack() as stack:
        pods = []
        for pod, port in zip("ab", ports, strict=True):
            log = str(folder / f"pod-{pod}.jsonl")
            server = start_server(mixed_model, "--name", "mixed", "--port", str(port),
                                  "--prediction-log", log, env=env)  # fmt: skip
            stack.callback(server.stop)
            pods.append(server)
        for n, server in enumerate(pods):
            with server.client() as http:
                for i in range(3):
                    row = frame.iloc[3 * n + i : 3 * n + i + 1][FEATURES]
                    body = {"instances": row.to_dict(orient="records")}
                    headers = {"x-request-id": f"{'ab'[n]}-{i}"}
                    r = http.post("/v1/models/mixed:predict", json=body, headers=headers)
                    assert r.status_code == 200, r.text
        items = [{"id": f"{p}-{i}", "truth": "yes"} for p in "ab" for i in range(3)]
        items.append({"id": "never-served", "truth": "no"})
        with pods[0].client() as http:  # every label to pod a
            doc = http.post("/v2/models/mixed/feedback", json={"feedback": items}).json()
        assert (doc["matched"], doc["unknown"]) == (6, 1), doc

        def labels(pod: str) -> list[str]:
            path = folder / f"pod-{pod}.jsonl"
            lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            return sorted(x["id"] for x in lines if x.get("kind") == "feedback")

        wait_for("7 labels in the logs", lambda: len(labels("a")) + len(labels("b")) == 7)
    assert labels("a") == ["a-0", "a-1", "a-2", "never-served"]
    assert labels("b") == ["b-0", "b-1", "b-2"]
    summary = snapshot(folder, tmp_path / "out")
    assert summary["rows"] == 6
