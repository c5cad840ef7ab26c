"""What ``camcli run`` shows: records on stdout, progress, errors and warnings on stderr.

stdout carries exactly the ``--json`` records, whatever stderr is. stderr carries one line per
failed input as it happens (``error: PATH: reason``) and each distinct warning once
(``warning: message``); on a terminal, without ``--quiet``, also a progress bar and, at the
end, a table of the failures; the closing summary line unless ``--quiet``.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from camcli.errors import CamcliWarning
from camcli.images import display_path
from camcli.machine_output import json_line
from camcli.sources import is_video_name

if TYPE_CHECKING:
    from camcli.config import Summary


class StdoutConsole(Console):
    """A rich console on stdout whose reader leaving (``camcli models | head -1``) raises
    ``BrokenPipeError``, for the CLI to end quietly with 141 (rich itself would exit 1)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(soft_wrap=True, **kwargs)

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def one_line(text: str) -> str:
    """``text`` with its line breaks turned into spaces: every message is one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def stderr_console() -> Console:
    """The console for everything but results: progress, errors, warnings, summaries."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(console: Console, message: str) -> None:
    """``error: message`` on ``console``, as one line; the message is text, never markup."""
    console.print(f"[bold red]error:[/] {escape(one_line(message))}", emoji=False)


def _rate(task: Task) -> float | None:
    """Units per second over the whole run: ``counted`` units / time since the task started.

    rich's own speed is a short window over the updates, and images finish in batch-sized
    bursts, so it swings between tens of thousands per second and nothing.
    """
    counted = task.fields.get("counted", 0)
    elapsed = task.elapsed
    return counted / elapsed if counted and elapsed else None


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = _rate(task)
        unit = task.fields["unit"]
        return Text(f"{rate:.1f} {unit}/s" if rate else f"- {unit}/s", style="progress.data.speed")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    minutes, whole = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{whole:02d}"


class _ElapsedColumn(ProgressColumn):
    # rich's own stops at the first time a task is complete; the passes line completes once
    # per batch, and its time is the run's.
    def render(self, task: Task) -> Text:
        return Text(_clock(task.elapsed), style="progress.elapsed")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = _rate(task)
        left = None if task.remaining is None or rate is None else task.remaining / rate
        return Text(f"eta {_clock(left)}", style="progress.remaining")


class RunDisplay:
    """stdout and stderr of one ``camcli run``; see the module docstring for what goes where.

    ``get_time`` is the progress clock (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        json_lines: bool = False,
        console: Console | None = None,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        self.console = console or stderr_console()
        self.quiet = quiet
        self.json_lines = json_lines
        self.live = not quiet and self.console.is_terminal
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            _ElapsedColumn(),
            _EtaColumn(),
            console=self.console,
            disable=not self.live,
            get_time=get_time,
            # By default rich draws whatever is printed on stdout above the bar, on stderr:
            # ``--json > file`` and ``--json | jq`` would get nothing.
            redirect_stdout=False,
        )
        self._images: TaskID | None = None
        self._passes: TaskID | None = None
        self._last_passes = (0, 0)  # (done, total) of the last passes report
        self._skipped = False  # the current input was skipped as existing
        self._said: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def warnings_once(self) -> Iterator[None]:
        """While inside, each distinct ``CamcliWarning`` is printed once as ``warning: ...``.

        The library warns from the main thread (setup) and from worker threads (the run);
        Python's own filter would print them with a file and line, and again for each place
        that warns.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("always", CamcliWarning)
            show = warnings.showwarning

            def showwarning(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: TextIO | None = None,
                line: str | None = None,
            ) -> None:
                if issubclass(category, CamcliWarning):
                    self.warn(str(message))
                else:
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = showwarning
            yield

    def warn(self, message: str) -> None:
        """Print ``warning: message`` unless this run has said it already."""
        message = one_line(message)
        with self._lock:
            if message in self._said:
                return
            self._said.add(message)
        self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def error(self, message: str) -> None:
        error_line(self.console, message)

    @contextmanager
    def running(self, description: str, total: int) -> Iterator[RunDisplay]:
        """The progress bar (on a terminal) while the images run; the clock starts here."""
        with self.progress:
            self._images = self.progress.add_task(description, total=total, unit="img", counted=0)
            # Added now, shown on first use: its rate counts from the start of the run too.
            self._passes = self.progress.add_task(
                "  forward passes", total=None, unit="passes", counted=0, visible=False
            )
            yield self

    def record(self, record: Mapping[str, Any]) -> None:
        """One manifest record: its JSON line on stdout, its error or warning on stderr."""
        if self.json_lines:
            sys.stdout.write(json_line(record) + "\n")
            sys.stdout.flush()
        if record["status"] == "error":
            self.error(record["error"])
        if record.get("warning"):
            self.warn(record["warning"])
        self._skipped = bool(record.get("skipped"))

    def advance(self, n: int) -> None:
        """``n`` more inputs are done (the pipeline says so after each input's records)."""
        assert self._images is not None, "advance() outside running()"
        # Inputs skipped as existing take no time: counted in the rate, they would make it
        # (and the ETA) a fantasy for a resumed run.
        counted = self.progress.tasks[self._images].fields["counted"] + (0 if self._skipped else n)
        self.progress.update(self._images, advance=n, counted=counted)

    def passes(self, done: int, total: int) -> None:
        """The extra forward passes of one explanation: ``done`` of ``total`` so far."""
        if self._passes is None:  # a probe while setting up: no run to show yet
            return
        last_done, last_total = self._last_passes
        new_round = total != last_total or done <= last_done or last_done >= last_total
        counted = self.progress.tasks[self._passes].fields["counted"]
        counted += done if new_round else done - last_done
        self._last_passes = (done, total)
        self.progress.update(
            self._passes, completed=done, total=total, counted=counted, visible=True
        )

    def finish(self, summary: Summary, out: Path, manifest: str = "manifest.jsonl") -> None:
        """The failure table (terminal only) and the closing line (unless quiet).

        ``manifest`` is the file the records went to (a shard's own part under ``--shard``).
        """
        if summary.failed and self.live:
            self.console.print(_failure_table(summary))
        if self.quiet:
            return
        if not summary.total:  # only a shard can be empty: collect_sources refuses no input
            self.console.print("no images in this shard; nothing written")
            return
        done = summary.ok + summary.skipped
        skipped = f" ({summary.skipped} skipped as existing)" if summary.skipped else ""
        failed = f", {len(summary.failed)} failed" if summary.failed else ""
        videos = summary.videos + sum(is_video_name(path) for path, _ in summary.failed)
        inputs = "images" if not videos else "videos" if videos == summary.total else "inputs"
        self.console.print(
            f"{done} of {summary.total} {inputs} explained{skipped}{failed}; outputs and "
            f"{escape(manifest)} in {escape(str(out))}"
        )


def _failure_table(summary: Summary) -> Table:
    table = Table(title=f"{len(summary.failed)} of {summary.total} inputs failed", box=None)
    table.add_column("input", overflow="fold")
    table.add_column("reason", overflow="fold")
    for path, error in summary.failed:
        shown = display_path(path)
        reason = error[len(shown) + 2 :] if error.startswith(f"{shown}: ") else error
        table.add_row(escape(shown), escape(one_line(reason)))
    return table
