"""The control plane's database: recording agents' updates."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockjoy.api.v1 import command_flow_pb2, host_pb2, node_pb2
from nodevisor.controlplane import _db
from nodevisor.controlplane._db import Database, Recorded


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "cp.db")
    yield database
    database.close()


@pytest.fixture
def host_id(db: Database) -> str:
    otp, _ = db.create_otp(60)
    host, _ = db.provision(otp, host_pb2.HostInfo(name="h"))
    return host


def node_update(node_id: str, **fields: object) -> command_flow_pb2.InfoUpdate:
    info = node_pb2.NodeInfo(**fields)  # type: ignore[arg-type]
    info.id.value = node_id
    return command_flow_pb2.InfoUpdate(node=info)


def nodes(db: Database, host_id: str) -> dict[str, node_pb2.NodeInfo]:
    return {node.info.id.value: node.info for node in db.list_nodes(host_id)}


def test_a_node_reported_again_is_merged_into_its_one_row(
    db: Database, host_id: str
) -> None:
    db.record_updates(host_id, [node_update("n1", name="first", image="chain/1")])
    db.record_updates(host_id, [node_update("n1", image="chain/2")])

    assert list(nodes(db, host_id)) == ["n1"]
    assert nodes(db, host_id)["n1"].name == "first"  # kept from the first report
    assert nodes(db, host_id)["n1"].image == "chain/2"


def test_an_update_that_raises_is_rolled_back_alone(
    db: Database, host_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_node = _db._apply_node

    def failing_for_n2(
        conn: sqlite3.Connection, host: str, info: node_pb2.NodeInfo, now: float
    ) -> Recorded:
        recorded = apply_node(conn, host, info, now)  # its write happens...
        if info.id.value == "n2":
            raise sqlite3.OperationalError("disk I/O error")  # ...then fails
        return recorded

    monkeypatch.setattr(_db, "_apply_node", failing_for_n2)
    updates = [node_update(n, name=n) for n in ("n1", "n2", "n3")]

    results = db.record_updates(host_id, updates)

    assert isinstance(results[0], Recorded) and isinstance(results[2], Recorded)
    assert isinstance(results[1], sqlite3.OperationalError)
    assert sorted(nodes(db, host_id)) == ["n1", "n3"]  # nothing of n2 is kept
    assert [kind for _, kind, _ in db.updates(host_id)] == ["node", "node"]


def test_updates_that_cannot_apply_are_logged_with_why(
    db: Database, host_id: str
) -> None:
    result = command_flow_pb2.InfoUpdate(command=command_flow_pb2.CommandInfo())
    result.command.id.value = "no-such-command"
    recorded = db.record_updates(host_id, [node_update("n1"), result])

    node, command = recorded
    assert isinstance(node, Recorded) and node.error is None
    assert isinstance(command, Recorded)
    assert "no unfinished command 'no-such-command'" in str(command.error)
    assert [(kind, error is not None) for _, kind, error in db.updates(host_id)] == [
        ("node", False),
        ("command", True),
    ]


@pytest.mark.anyio
async def test_a_queued_write_that_raises_fails_alone(
    db: Database, host_id: str
) -> None:
    def failing(conn: sqlite3.Connection) -> None:
        _db.record_updates(conn, host_id, [node_update("n2")])  # undone with it
        raise sqlite3.OperationalError("disk I/O error")

    # Queued in one go: they commit together.
    first = db.write(_db.record_updates, host_id, [node_update("n1")])
    second = db.write(failing)
    third = db.write(_db.record_updates, host_id, [node_update("n3")])

    assert isinstance((await first)[0], Recorded)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await second
    assert isinstance((await third)[0], Recorded)
    assert sorted(nodes(db, host_id)) == ["n1", "n3"]
