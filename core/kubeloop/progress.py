"""Progress of long commands: stages, rows and trials, for a person at a terminal.

A command opens one reporter (:func:`open_progress`) and the code doing the work calls
:meth:`Progress.stage`, :meth:`Progress.total` and :meth:`Progress.advance` on it. Three
reporters, one interface:

- ``rich``: a live display on stderr — one line per stage with a spinner, its count
  (``1,200/5,000 rows``, ``4/12 trials``) and the time it took; notes print above it;
- ``json``: one JSON line on stderr when a stage starts and one when it ends (with its
  count and seconds), for logs a program reads;
- ``none``: nothing; notes go to the command's own plain log, as before.

``auto`` (the default) is ``rich`` when stderr is a terminal (and ``TERM`` is not
``dumb``), else ``none``: a Job's log, a pipe and a test's captured output are not
changed by progress. Standard output is never written by a reporter; a live display
only prints what the command itself writes there above its lines while it runs, when
stdout is a terminal too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self, get_args

import click

if TYPE_CHECKING:
    from rich.progress import Progress as RichLive
    from rich.progress import TaskID

Mode = Literal["auto", "rich", "json", "none"]
MODES: tuple[str, ...] = get_args(Mode)
#: the environment variable the ``--progress`` option reads
PROGRESS_ENV = "KUBELOOP_PROGRESS"


def resolve(mode: str, *, is_tty: bool, term: str | None) -> Literal["rich", "json", "none"]:
    """The reporter ``mode`` means for a stderr that is (or is not) a terminal."""
    if mode == "auto":
        return "rich" if is_tty and term != "dumb" else "none"
    if mode in ("rich", "json", "none"):
        return mode  # type: ignore[return-value]
    raise ValueError(f"progress mode {mode!r}: use one of {', '.join(MODES)}")


def counted(done: int, total: int | None, unit: str) -> str:
    """``4/12 trials``, ``1,200 rows``, or nothing for a stage that counts nothing."""
    if not unit:
        return ""
    return f"{done:,}/{total:,} {unit}" if total is not None else f"{done:,} {unit}"


class Progress:
    """The interface, and the quiet reporter: it shows nothing.

    ``plain`` receives the notes (a command's own log lines) when nothing shows them.
    """

    def __init__(self, plain: Callable[[str], None] | None = None) -> None:
        self.plain = plain
        self.name: str | None = None
        self.unit = ""
        self.count = 0
        self.limit: int | None = None
        self.started = 0.0

    def stage(self, name: str, *, total: int | None = None, unit: str = "") -> None:
        """Start stage ``name`` (ending the one before), counting ``unit`` up to ``total``."""
        self._end_stage(ok=True)
        self.name, self.unit, self.count, self.limit = name, unit, 0, total
        self.started = time.monotonic()
        self._started()

    def total(self, total: int) -> None:
        """How many ``unit`` the current stage has, once that is known."""
        self.limit = total
        self._changed()

    def advance(self, amount: int = 1) -> None:
        """``amount`` more ``unit`` of the current stage are done."""
        self.count += amount
        self._changed()

    def note(self, message: str) -> None:
        """A line for the person watching (a log line of the command's own)."""
        if self.plain is not None:
            self.plain(message)

    def done(self) -> None:
        """End the current stage, if one runs, and the display until the next stage."""
        self._end_stage(ok=True)
        self._idle()

    def _end_stage(self, *, ok: bool) -> None:
        if self.name is not None:
            self._ended(time.monotonic() - self.started, ok=ok)
            self.name = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """The stage running when an error (or a failing exit) leaves the block failed."""
        failed = error is not None and not (isinstance(error, SystemExit) and not error.code)
        self._end_stage(ok=not failed)
        self._idle()

    # what the reporters show; the quiet one nothing
    def _started(self) -> None:
        pass

    def _changed(self) -> None:
        pass

    def _ended(self, seconds: float, *, ok: bool) -> None:
        pass

    def _idle(self) -> None:
        pass


class JsonProgress(Progress):
    """One JSON line per stage start and end (and per note) on ``stream``."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream

    def _emit(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def _started(self) -> None:
        self._emit({"event": "start", "stage": self.name, "unit": self.unit, "total": self.limit})

    def _ended(self, seconds: float, *, ok: bool) -> None:
        self._emit(
            {
                "event": "end",
                "stage": self.name,
                "ok": ok,
                "unit": self.unit,
                "done": self.count,
                "total": self.limit,
                "seconds": round(seconds, 3),
            }
        )

    def note(self, message: str) -> None:
        self._emit({"event": "note", "message": message})


class RichProgress(Progress):
    """A live display on ``stream``: one line per stage (``transient``: gone when done).

    The display runs while a stage does, so a command's other output between stages is
    untouched; while it runs, writes to stderr (and to stdout when that is a terminal
    too) print above it.
    """

    def __init__(self, stream: IO[str], *, transient: bool = False) -> None:
        super().__init__()
        self.live = _rich_live(stream, transient)
        self.task: TaskID | None = None
        self.running = False

    def _started(self) -> None:
        if not self.running:
            self.live.start()
            self.running = True
        from rich.markup import escape

        name = escape(self.name or "")
        self.task = self.live.add_task(name, total=self.limit, count=self._count())

    def _count(self) -> str:
        return counted(self.count, self.limit, self.unit)

    def _changed(self) -> None:
        if self.task is not None:
            self.live.update(self.task, completed=self.count, total=self.limit, count=self._count())

    def _ended(self, seconds: float, *, ok: bool) -> None:
        if self.task is None:
            return
        if ok:  # a stage that ends is finished, whatever it counted (spinner → tick)
            finished = max(self.count, self.limit or 0, 1)
            self.live.update(self.task, total=finished, completed=finished, count=self._count())
        else:
            from rich.markup import escape

            self.live.update(self.task, description=f"[red]{escape(self.name or '')}: failed")
        self.live.stop_task(self.task)
        self.task = None

    def note(self, message: str) -> None:
        from rich.text import Text

        self.live.console.print(Text(message, style="dim"))

    def _idle(self) -> None:
        if self.running:
            self.live.stop()  # the stages stay on the terminal, unless transient
            self.running = False
            for task in list(self.live.task_ids):
                self.live.remove_task(task)  # shown already: not again by the next start


def _rich_live(stream: IO[str], transient: bool) -> RichLive:
    """Rich's progress display on ``stream``: spinner, stage, bar, count, time taken."""
    from rich.console import Console
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Live

    console = Console(file=stream, force_terminal=True, soft_wrap=True)
    return Live(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        redirect_stdout=_is_tty(sys.stdout),
        redirect_stderr=True,
        refresh_per_second=8,
    )


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def open_progress(
    mode: str = "auto",
    *,
    stream: IO[str] | None = None,
    plain: Callable[[str], None] | None = None,
    transient: bool = False,
) -> Progress:
    """The reporter for ``mode`` (see :func:`resolve`), showing on ``stream`` (stderr)."""
    out = stream if stream is not None else sys.stderr
    chosen = resolve(mode, is_tty=_is_tty(out), term=os.environ.get("TERM"))
    if chosen == "rich":
        return RichProgress(out, transient=transient)
    if chosen == "json":
        return JsonProgress(out)
    return Progress(plain)


#: ``--progress``, shared by the commands that take more than a second.
progress_option = click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    envvar=PROGRESS_ENV,
    show_envvar=True,
    help="Progress on stderr: rich (a live display), json (a line per stage start and "
    "end), none; auto is rich on a terminal, else none. Standard output is the same in all.",
)
