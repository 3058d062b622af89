"""Progress bars for steps that take seconds (model import and quantization), on stderr.

A long job reports its named steps through a plain ``Callable[[str], None]`` (no rich in the job
itself); ``steps`` turns that into a bar when stderr is a terminal, and into nothing otherwise, so
scripts and ``--json`` output stay clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Step = Callable[[str], None]


@contextmanager
def steps(title: str, total: int, console: Console | None = None, *, enabled: bool | None = None) -> Iterator[Step]:
    """A ``Step`` callback advancing one bar of ``total`` steps; each call starts the named step."""
    console = console or Console(stderr=True)
    if not (console.is_terminal if enabled is None else enabled):
        yield lambda _name: None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[title]}[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("", total=total, title=title)
        started = False

        def step(name: str) -> None:
            nonlocal started
            if started:
                progress.advance(task)
            started = True
            progress.update(task, description=name)

        yield step
        progress.update(task, completed=total, description="done")
