"""Progress of a long job's steps: rich bars with an ETA on a terminal, plain lines otherwise.

``vitaccel build`` spends minutes in a few steps (Yosys, the Verilator build, the image
runs). On a terminal each step gets a rich progress bar: counted steps (images) show
``done/total`` and an ETA from their own pace; steps that cannot count (Yosys, a Verilator
build) show an ETA from how long the same step took last time on this machine (kept in
``~/.cache/vitaccel/step-seconds.json``), or only the elapsed time the first time. Off a
terminal (pipes, CI, ``--json`` consumers) every step prints one line when it starts and one
when it ends, as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, ProgressBar, ProgressColumn
from rich.table import Column
from rich.text import Text

__all__ = ["BuildProgress", "Step"]


def _history_path() -> Path:
    from vitaccel.sim.runner import sim_cache_dir

    return sim_cache_dir().parent / "step-seconds.json"  # beside the sim and yosys caches


class Step:
    """One running step: :meth:`advance` its count, :meth:`note` what it is doing."""

    def __init__(self, owner: BuildProgress, name: str, task_id=None):
        self._owner = owner
        self.name = name
        self._task = task_id

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._owner._progress.advance(self._task, n)

    def note(self, message: str) -> None:
        if self._task is not None:
            short = message.split(" (")[0]  # the bar keeps its room; details are in the log
            self._owner._progress.update(self._task, description=f"{self.name}: {short}")
        else:
            self._owner.say(message)


class BuildProgress:
    """The steps of one job.

    Parameters
    ----------
    say : callable
        Prints one progress line (used off a terminal, and for notes there).
    live : bool
        Draw rich progress bars (on stderr) instead of lines.
    """

    def __init__(self, *, say: Callable[[str], None], live: bool = False, console=None):
        self.say = say
        self.live = live
        self._console = console
        self._progress = None
        self._history: dict[str, float] | None = None

    def __enter__(self) -> BuildProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn(
                    "{task.description}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", max_width=56),
                ),
                _Bar(bar_width=28),
                _Count(),
                TimeElapsedColumn(),
                _Eta(),
                console=self._console or Console(stderr=True),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- history of step durations ----------------------------------------------------------

    def _expected(self, key: str | None) -> float | None:
        if key is None:
            return None
        if self._history is None:
            try:
                self._history = json.loads(_history_path().read_text())
            except (OSError, ValueError):
                self._history = {}
        return self._history.get(key)

    def _remember(self, key: str | None, seconds: float) -> None:
        if key is None or self._history is None:
            return
        self._history[key] = round(seconds, 1)
        try:
            from vitaccel.util import atomic_write_text

            atomic_write_text(_history_path(), json.dumps(self._history, indent=0))
        except OSError:
            pass  # an ETA hint is not worth failing a build

    @contextmanager
    def step(
        self, name: str, *, total: int | None = None, key: str | None = None
    ) -> Iterator[Step]:
        """Run one step; ``total``: its count (images), ``key``: names it in the history
        of durations (for the ETA of steps that cannot count)."""
        t0 = time.monotonic()
        if self._progress is None:
            self.say(f"{name} ...")
            yield Step(self, name)
            self.say(f"{name}: done in {time.monotonic() - t0:.1f} s")
            return
        expected = self._expected(key) if total is None else None
        task = self._progress.add_task(
            name, total=total, expected=expected, counted=total is not None
        )
        step = Step(self, name, task)
        ok = False
        try:
            yield step
            ok = True
        finally:
            seconds = time.monotonic() - t0
            if ok:
                self._remember(key, seconds)
                self._progress.update(
                    task, description=f"{name}: done in {seconds:.1f} s", total=total or 1,
                    completed=total or 1,
                )  # fmt: skip
            else:
                self._progress.update(task, description=f"[red]{name}: failed[/]")
                self._progress.stop_task(task)


class _Count(ProgressColumn):
    """``done/total`` of a counted step."""

    def render(self, task):
        if not task.fields.get("counted"):
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}")


class _Bar(BarColumn):
    """A bar that fills with elapsed time over the expected time for steps that cannot count
    (never quite full until the step ends)."""

    def render(self, task):
        exp = task.fields.get("expected")
        if exp and not task.finished:
            done = min(task.elapsed or 0.0, 0.99 * exp)
            return ProgressBar(total=exp, completed=done, width=self.bar_width)
        return super().render(task)


class _Eta(ProgressColumn):
    """ETA from the step's own pace (counted steps) or from its last duration."""

    def render(self, task):
        if task.finished or not task.elapsed:
            return Text("")
        exp = task.fields.get("expected")
        if exp:
            left = exp - task.elapsed
            text = "ETA overdue" if left < 0 else f"ETA {_fmt(left)} (last run)"
            return Text(text, style="cyan")
        if task.total and task.completed:
            left = task.elapsed / task.completed * (task.total - task.completed)
            return Text(f"ETA {_fmt(left)}", style="cyan")
        return Text("")


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"
