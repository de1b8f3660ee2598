"""Writes that fail alone, for the agent's store and the control plane's database.

Both commit many callers' writes in one transaction, and a write that raises
must be undone without undoing the others. A savepoint around every write
does that, at two statements a write; ``each_or_alone`` tries the writes as
one piece first and pays for savepoints only when one of them raises.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["each_or_alone"]

T = TypeVar("T")


def each_or_alone(
    db: sqlite3.Connection,
    whole: Callable[[], list[T]],
    parts: Sequence[Callable[[], T]],
) -> list[T | Exception]:
    """``whole()``, or if it raises, each of ``parts`` in a savepoint of its own.

    ``whole`` does what the ``parts`` do one by one (it may do it more
    cheaply) and returns their results in order. If it raises, everything it
    wrote is undone and the parts run in turn: a part that raises is undone
    alone and its exception takes its place among the results.
    """
    db.execute("SAVEPOINT whole")
    try:
        results: list[T | Exception] = list(whole())
    except Exception:
        db.execute("ROLLBACK TO whole")
        results = [_alone(db, part) for part in parts]
    db.execute("RELEASE whole")
    return results


def _alone(db: sqlite3.Connection, part: Callable[[], T]) -> T | Exception:
    db.execute("SAVEPOINT part")
    try:
        return part()
    except Exception as exc:  # handed to that write's caller
        db.execute("ROLLBACK TO part")
        return exc
    finally:
        db.execute("RELEASE part")
