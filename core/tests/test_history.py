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


def answered(store: Store, command_id: str, at: float, clock) -> int:
    """Record, finish and report a command at ``at``; its result's number."""
    clock.now = at
    store.record_command(command_id, "node-1", "node.start")
    store.outbox_add(b"ack")
    store.finish_command(command_id, 0, "started")
    return store.outbox_add(b"result", command_id)


def test_commands_finished_before_the_cutoff_are_forgotten(tmp_path, clock):
    store = Store(tmp_path / "s.db")
    answered(store, "old", 100.0, clock)
    store.outbox_confirm(answered(store, "recent", 900.0, clock))
    clock.now = 50.0
    store.record_command("running", "node-2", "node.stop")

    assert store.prune_commands(before=500.0) == 1

    assert store.command("old") is None
    assert store.command("recent").finished
    assert store.command("running") is not None  # unfinished: never pruned
    store.close()


def test_a_command_whose_result_is_unconfirmed_is_kept(tmp_path, clock):
    """The control plane may send it again until it has the result; the
    agent must then answer it, not run it a second time. That holds when
    the result is the oldest update left, and when older ones are left too."""
    store = Store(tmp_path / "s.db")
    result = answered(store, "old", 100.0, clock)
    store.outbox_confirm(result - 1)  # its ack is confirmed, its result not

    assert store.prune_commands(before=500.0) == 0
    assert store.command("old") is not None

    store.outbox_confirm(result)
    assert store.prune_commands(before=500.0) == 1
    store.close()


def test_a_command_whose_result_never_reached_the_outbox_is_kept(tmp_path, clock):
    """Finished, but the agent stopped before its result was written: the
    control plane will send it again, and it must be answered."""
    store = Store(tmp_path / "s.db")
    clock.now = 100.0
    store.record_command("cut-short", "node-1", "node.start")
    store.finish_command("cut-short", 1, "interrupted")

    assert store.prune_commands(before=500.0) == 0
    store.close()


def test_a_result_sent_again_holds_the_command_until_it_is_confirmed(tmp_path, clock):
    store = Store(tmp_path / "s.db")
    first = answered(store, "twice", 100.0, clock)
    again = store.outbox_add(b"result again", "twice")
    store.outbox_confirm(first)

    assert store.prune_commands(before=500.0) == 0
    store.outbox_confirm(again)
    assert store.prune_commands(before=500.0) == 1
    store.close()


def test_a_store_from_before_results_were_numbered_is_upgraded(tmp_path, clock):
    """Its finished commands have no result number, and are kept."""
    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE commands (id TEXT PRIMARY KEY, node_id TEXT,"
        " kind TEXT NOT NULL, received_at REAL NOT NULL, finished_at REAL,"
        " exit_code INTEGER, response TEXT);"
        "INSERT INTO commands VALUES ('old', 'n', 'node.start', 1, 2, 0, 'ok');"
    )
    old.close()

    store = Store(path)
    assert store.command("old").finished
    assert store.prune_commands(before=500.0) == 0
    store.outbox_confirm(answered(store, "new", 100.0, clock))
    assert store.prune_commands(before=500.0) == 1
    assert store.command("old") is not None
    store.close()


def test_a_store_from_before_commands_waited_counts_them_started(tmp_path):
    """Before, a command was recorded only as it began to run: an unfinished
    one from then was interrupted, not forgotten as one that never ran."""
    path = tmp_path / "s.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE commands (id TEXT PRIMARY KEY, node_id TEXT,"
        " kind TEXT NOT NULL, received_at REAL NOT NULL, finished_at REAL,"
        " exit_code INTEGER, response TEXT, result_seq INTEGER);"
        "INSERT INTO commands VALUES ('cut', 'n', 'node.start', 1, NULL, NULL,"
        " NULL, NULL);"
    )
    old.close()

    store = Store(path)
    assert store.forget_unstarted() == 0
    [record] = store.unfinished_commands()
    assert (record.id, record.started_at) == ("cut", 1.0)
    store.close()
