"""Terminal output shared by the command lines."""

from __future__ import annotations

import os
import sys

from rich.console import Console

__all__ = ["console"]

#: Tables written to a pipe or file are this wide, so ids stay whole.
PIPE_WIDTH = 250


def console(*, stderr: bool = False) -> Console:
    """A rich console; not cut to 80 columns when the output is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = PIPE_WIDTH
    return Console(file=stream, width=width)
