"""The agent's memory of finished commands, and how it is pruned."""

from __future__ import annotations

import sqlite3

import pytest

from nodevisor import _store
from nodevisor._store import Store


@pytest.fixture
def clock(monkeypatch):
    """Set the time the store reads: ``clock.now = ...``."""

    class Clock:
        now = 1_000.0

    monkeypatch.setattr(_store.time, "time", lambda: Clock.now)
    return Clock


def finished(store: Store, command_id: str, at: float, clock) -> None:
    clock.now = at
    store.record_command(command_id, "node-1", "node.start")
    store.finish_command(command_id, 0, "started")


def test_commands_finished_before_the_cutoff_are_forgotten(tmp_path, clock):
    store = Store(tmp_path / "s.db")
    finished(store, "old", 100.0, clock)
    finished(store, "recent", 900.0, clock)
    clock.now = 50.0
    store.record_command("running", "node-2", "node.stop")

    assert store.prune_commands(before=500.0) == 1

    assert store.command("old") is None
    assert store.command("recent").finished
    assert store.command("running") is not None  # unfinished: never pruned
    store.close()


def test_a_command_whose_result_is_unconfirmed_is_kept(tmp_path, clock):
    """The control plane may send it again until it has the result; the
    agent must then answer it, not run it a second time."""
    store = Store(tmp_path / "s.db")
    finished(store, "old", 100.0, clock)
    seq = store.outbox_add(b"the result of old")  # written as it finished

    assert store.prune_commands(before=500.0) == 0
    assert store.command("old") is not None

    store.outbox_confirm(seq)
    assert store.prune_commands(before=500.0) == 1
    store.close()


def test_a_store_from_before_the_outbox_had_times_is_upgraded(tmp_path, clock):
    """Its unconfirmed updates hold pruning back until they are confirmed."""
    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " payload BLOB NOT NULL);"
        "INSERT INTO outbox (payload) VALUES (x'00');"
    )
    old.close()

    store = Store(path)
    finished(store, "old", 100.0, clock)
    assert [tuple(row) for row in store.outbox()] == [(1, b"\x00")]
    assert store.prune_commands(before=500.0) == 0
    store.outbox_confirm(1)
    assert store.prune_commands(before=500.0) == 1
    store.close()
