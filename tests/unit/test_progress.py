"""kubeloop.progress: which reporter a mode means, and what each one writes."""

from __future__ import annotations

import io
import json
import re

import pytest

from kubeloop.progress import (
    JsonProgress,
    Progress,
    RichProgress,
    counted,
    open_progress,
    resolve,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.parametrize(
    ("mode", "is_tty", "term", "chosen"),
    [
        ("auto", True, "xterm-256color", "rich"),
        ("auto", True, None, "rich"),
        ("auto", True, "dumb", "none"),
        ("auto", False, "xterm", "none"),
        ("rich", False, "dumb", "rich"),
        ("json", True, "xterm", "json"),
        ("none", True, "xterm", "none"),
    ],
)
def test_resolve(mode, is_tty, term, chosen):
    assert resolve(mode, is_tty=is_tty, term=term) == chosen


def test_resolve_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="auto, rich, json, none"):
        resolve("fancy", is_tty=True, term="xterm")


def test_counted():
    assert counted(1200, 5000, "rows") == "1,200/5,000 rows"
    assert counted(3, None, "rows") == "3 rows"
    assert counted(0, None, "") == ""


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_open_progress_is_rich_on_a_terminal_and_quiet_elsewhere(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(open_progress("auto", stream=Terminal()), RichProgress)
    quiet = open_progress("auto", stream=io.StringIO())
    assert type(quiet) is Progress
    assert isinstance(open_progress("json", stream=Terminal()), JsonProgress)


def test_the_quiet_reporter_writes_nothing_and_passes_notes_on():
    notes: list[str] = []
    stream = io.StringIO()
    with open_progress("none", stream=stream, plain=notes.append) as shown:
        shown.stage("reading", unit="rows")
        shown.advance(10)
        shown.note("a log line")
    assert stream.getvalue() == ""
    assert notes == ["a log line"]


def test_json_lines_one_per_stage_start_and_end(monkeypatch):
    clock = iter([10.0, 10.5, 10.5, 12.0])
    monkeypatch.setattr("kubeloop.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    with open_progress("json", stream=stream) as shown:
        shown.stage("reading", unit="rows")
        shown.advance(100)
        shown.advance(20)
        shown.stage("search", total=4, unit="trials")
        for _ in range(4):
            shown.advance()
        shown.note("tried them all")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events == [
        {"event": "start", "stage": "reading", "unit": "rows", "total": None},
        {
            "event": "end",
            "stage": "reading",
            "ok": True,
            "unit": "rows",
            "done": 120,
            "total": None,
            "seconds": 0.5,
        },
        {"event": "start", "stage": "search", "unit": "trials", "total": 4},
        {"event": "note", "message": "tried them all"},
        {
            "event": "end",
            "stage": "search",
            "ok": True,
            "unit": "trials",
            "done": 4,
            "total": 4,
            "seconds": 1.5,
        },
    ]


def stages_then(error: BaseException, stream: io.StringIO, mode: str = "json") -> None:
    """A reading stage, a search of three trials, a writing stage that ``error`` ends."""
    with open_progress(mode, stream=stream) as shown:
        shown.stage("reading", unit="rows")
        shown.advance(569)
        shown.stage("search", total=3, unit="trials")
        for _ in range(3):
            shown.advance()
        shown.note("[cluster] not markup")
        shown.stage("writing [artifacts]")
        raise error


@pytest.mark.parametrize(("error", "ok"), [(SystemExit(2), False), (SystemExit(0), True)])
def test_an_error_ends_the_running_stage_not_ok(error, ok):
    stream = io.StringIO()
    with pytest.raises(SystemExit):
        stages_then(error, stream)
    assert json.loads(stream.getvalue().splitlines()[-1])["ok"] is ok


def test_rich_shows_stages_counts_and_failures(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    stream = Terminal()
    with pytest.raises(RuntimeError):
        stages_then(RuntimeError("disk full"), stream, "auto")
    screen = stream.getvalue()
    assert ANSI.search(screen)
    text = ANSI.sub("", screen)
    for shown_text in ("reading", "569 rows", "3/3 trials", "[cluster] not markup"):
        assert shown_text in text
    assert "writing [artifacts]: failed" in text


def test_rich_display_runs_only_while_a_stage_does(monkeypatch):
    """Between stages (the demo narrates there) nothing redraws; stages shown once stay."""
    monkeypatch.setenv("COLUMNS", "120")
    stream = Terminal()
    shown = open_progress("rich", stream=stream, transient=False)
    assert isinstance(shown, RichProgress)
    shown.stage("waiting for the Dataset")
    shown.done()
    assert not shown.running
    assert list(shown.live.task_ids) == []
    before = stream.getvalue()
    shown.stage("waiting for the TrainingJob")
    shown.done()
    after = ANSI.sub("", stream.getvalue()[len(before) :])
    assert "waiting for the TrainingJob" in after
    assert "waiting for the Dataset" not in after


def test_no_reporter_writes_to_stdout(capfd):
    for mode in ("rich", "json", "none"):
        with open_progress(mode, stream=io.StringIO()) as shown:
            shown.stage("reading", unit="rows")
            shown.advance(3)
    assert capfd.readouterr().out == ""
