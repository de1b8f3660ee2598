"""Log output for the command lines: the usual lines, made cheaply.

Every status change and every result is logged at INFO, so a busy agent or
control plane writes thousands of lines a second. ``configure`` keeps the
format (``time LEVEL logger: message``) and drops the work no line uses: the
caller's file and line, thread and process names, and a time formatted anew
for every line rather than once a second.
"""

from __future__ import annotations

import logging
import time

__all__ = ["FORMAT", "Formatter", "configure"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Formatter(logging.Formatter):
    """``logging.Formatter`` that formats the date and time once a second."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def configure(level: int | str | None = None) -> None:
    """Log to stderr as ``logging.basicConfig`` would, in ``FORMAT``.

    Does nothing to a root logger that has handlers already (as
    ``basicConfig``), except set ``level`` if given.
    """
    # Fields of every record that no line here shows.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller's file and line: no stack walk
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(Formatter(FORMAT))
        root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
