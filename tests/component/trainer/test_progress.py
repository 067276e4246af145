"""Progress of `kubeloop snapshot/train/predict` as real processes: a live display when stderr
is a terminal (a pseudo-terminal here), JSON lines when asked, and nothing in a pipe —
standard output the same in every case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from terminal import ANSI, Terminal, on_terminal

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))

SEARCH_SPEC = (
    "datasetRef: {name: cancer}\nmodelName: cancer\ntask: classification\ntarget: target\n"
    "estimator: {className: DecisionTreeClassifier}\n"
    "search: {strategy: grid, space: {max_depth: [2, 4, 6]}, cv: 2, metric: f1}\n"
)
ROWS = 569  # the breast-cancer data set


def env(**extra: str) -> dict[str, str]:
    """This process's environment without a progress setting of its own."""
    base = {k: v for k, v in os.environ.items() if k not in ("KUBELOOP_PROGRESS", "NO_COLOR")}
    return {**base, **extra}


@dataclass
class Piped:
    """A finished `kubeloop` whose stdout and stderr were pipes."""

    code: int
    stdout: str
    stderr: str


def run_kubeloop(args: list[str], termination: Path, environ: dict[str, str]) -> Piped:
    """Run `kubeloop ARGS` with stdout and stderr on pipes."""
    proc = subprocess.run(
        [KUBELOOP, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**environ, "KUBELOOP_TERMINATION_LOG": str(termination)},
        timeout=300,
        check=False,
    )
    return Piped(proc.returncode, proc.stdout, proc.stderr)


def tty(args: list[str], termination: Path) -> Terminal:
    """Run `kubeloop ARGS` with stderr on a terminal (stdout on a pipe)."""
    return on_terminal([KUBELOOP, *args], env(KUBELOOP_TERMINATION_LOG=str(termination)))


@pytest.fixture(scope="module")
def model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progress") / "model"
    args = ["train", "--data", str(data / "cancer.csv"), "--out", str(out), "--target", "target"]
    args += ["--task", "classification", "--estimator", "LogisticRegression", "--progress=none"]
    result = run_kubeloop([*args, "--params", '{"max_iter": 500}'], out.parent / "t", env())
    assert result.code == 0, result.stderr
    return out


def snapshot_args(data: Path, out: Path) -> list[str]:
    return ["snapshot", "--source", str(data / "cancer.csv"), "--out", str(out)]


def test_snapshot_stdout_is_the_same_in_a_pipe_on_a_terminal_and_with_json(data, tmp_path):
    piped = run_kubeloop(snapshot_args(data, tmp_path / "a"), tmp_path / "t1", env())
    json_lines = run_kubeloop(
        [*snapshot_args(data, tmp_path / "b"), "--progress", "json"], tmp_path / "t2", env()
    )
    seen = tty(snapshot_args(data, tmp_path / "c"), tmp_path / "t3")
    assert (piped.code, json_lines.code, seen.code) == (0, 0, 0), (piped.stderr, seen.screen)
    results = [json.loads(s) for s in (piped.stdout, json_lines.stdout, seen.stdout)]
    for result in results:  # the same result line, but for where the copy went
        result["snapshot_uri"] = result["profile_uri"] = None
    assert results[0] == results[1] == results[2]
    assert [len(s.splitlines()) for s in (piped.stdout, json_lines.stdout, seen.stdout)] == [
        1,
        1,
        1,
    ]
    # a pipe: no progress and no escape sequences at all
    assert piped.stderr == ""
    assert not ANSI.search(piped.stdout + json_lines.stdout + seen.stdout)
    # json: a start and an end line per stage, the rows counted
    events = [json.loads(line) for line in json_lines.stderr.splitlines()]
    ends = {e["stage"]: e for e in events if e["event"] == "end"}
    assert [e["stage"] for e in events if e["event"] == "start"] == list(ends)
    assert list(ends) == ["reading", "profile", "writing"]
    assert ends["reading"]["done"] == ROWS
    assert ends["profile"]["done"] == ends["profile"]["total"] > 0
    assert all(e["ok"] for e in ends.values())
    # a terminal: the live display, stage by stage, with the rows
    assert ANSI.search(seen.screen)
    text = seen.text
    for stage in ("reading", "profile", "writing"):
        assert stage in text, text
    assert f"{ROWS} rows" in text, text  # streamed: counted without a total


def test_train_shows_the_search_trials(data, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SEARCH_SPEC)
    args = ["train", "--spec", str(spec), "--data", str(data / "cancer.csv")]
    piped = run_kubeloop([*args, "--out", str(tmp_path / "a")], tmp_path / "t1", env())
    seen = tty([*args, "--out", str(tmp_path / "b")], tmp_path / "t2")
    assert (piped.code, seen.code) == (0, 0), (piped.stderr, seen.screen)
    assert len(seen.stdout.splitlines()) == 1
    assert not ANSI.search(seen.stdout + piped.stdout)
    assert json.loads(seen.stdout)["metrics"] == json.loads(piped.stdout)["metrics"]
    assert "trials" not in piped.stderr
    assert not ANSI.search(piped.stderr)
    text = seen.text
    for shown in ("reading data", f"{ROWS} rows", "search", "3/3 trials", "writing artifacts"):
        assert shown in text, text


def test_train_json_lines_count_trials_and_mark_a_failed_stage(data, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SEARCH_SPEC)
    args = ["train", "--spec", str(spec), "--data", str(data / "cancer.csv"), "--progress=json"]
    result = run_kubeloop([*args, "--out", str(tmp_path / "m")], tmp_path / "t", env())
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    search = next(e for e in events if e["event"] == "end" and e["stage"] == "search")
    assert (search["done"], search["total"], search["unit"]) == (3, 3, "trials")
    # the environment variable chooses too; a stage cut short by an error ends not ok
    bad = ["train", "--spec", str(spec), "--data", str(tmp_path / "none.csv")]
    missing = run_kubeloop(
        [*bad, "--out", str(tmp_path / "x")], tmp_path / "t2", env(KUBELOOP_PROGRESS="json")
    )
    assert missing.code == 2
    lines = missing.stderr.splitlines()
    failed = json.loads(next(line for line in lines if '"end"' in line))
    assert (failed["stage"], failed["ok"]) == ("reading data", False)
    assert json.loads(missing.stdout)["status"] == "failed"


def test_predict_counts_rows(data, model, tmp_path):
    args = ["predict", "--model", str(model), "--data", str(data / "cancer.parquet")]
    args += ["--batch-rows", "100"]
    piped = run_kubeloop([*args, "--out", str(tmp_path / "a.csv")], tmp_path / "t1", env())
    seen = tty([*args, "--out", str(tmp_path / "b.csv")], tmp_path / "t2")
    assert (piped.code, seen.code) == (0, 0), (piped.stderr, seen.screen)
    assert piped.stderr == ""
    assert not ANSI.search(piped.stdout + seen.stdout)
    results = [json.loads(s) for s in (piped.stdout, seen.stdout)]
    assert [(r["rows"], r["sha256"]) for r in results] == [(ROWS, results[0]["sha256"])] * 2
    text = seen.text
    for shown in ("scoring", f"{ROWS}/{ROWS} rows", "publishing the output"):
        assert shown in text, text
