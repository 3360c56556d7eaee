"""What the commands do only for a person at a terminal: progress bars and confirmations.

A progress bar is drawn on stderr when stderr is a terminal, and nothing is drawn
otherwise, so a cron job's log or a pipe gets only the command's own output.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

Advance = Callable[[int, int], None]
"""Told (done, total) as the work goes on; the total may grow."""


def stdin_is_terminal() -> bool:
    """Whether a person can be asked (stdin is a terminal)."""
    return sys.stdin.isatty()


def stderr_is_terminal() -> bool:
    """Whether a progress bar can be drawn (stderr is a terminal)."""
    return sys.stderr.isatty()


def _quiet(_done: int, _total: int) -> None:
    """Draws nothing (stderr is not a terminal)."""


@contextmanager
def progress_bar(label: str) -> Iterator[Advance]:
    """A bar on stderr for the block, fed (done, total); nothing when stderr is not a terminal."""
    if not stderr_is_terminal():
        yield _quiet
        return
    bar: Any = None
    try:

        def advance(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
                bar.__enter__()
            bar.length = max(total, done, 1)
            bar.update(done - bar.pos)

        yield advance
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def confirm_or_refuse(question: str, *, yes: bool) -> None:
    """Go on when ``yes`` or when the person at the terminal agrees; stop otherwise.

    Raises:
        click.ClickException: stdin is not a terminal and ``--yes`` was not given
            (exit code 1: nothing was done), or the person said no (``click.Abort``).
    """
    if yes:
        return
    if not stdin_is_terminal():
        raise click.ClickException(
            f"{question} Refused: stdin is not a terminal to ask; pass --yes to go ahead"
        )
    click.confirm(question, abort=True, err=True)
