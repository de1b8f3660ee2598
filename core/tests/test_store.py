"""The store's long reads, on a connection of their own."""

import threading
from pathlib import Path

import anyio
import pytest

from nodevisor._states import NodeStatus
from nodevisor._store import NodeRecord, Store, StoreRunner

pytestmark = pytest.mark.anyio


def node(n: int) -> NodeRecord:
    return NodeRecord(
        id=f"id-{n}",
        name=f"node-{n}",
        protocol="testchain",
        version="1",
        runtime="memory",
        status=NodeStatus.Running,
        expected=NodeStatus.Running,
    )


def test_replace_changes_the_fields_named_and_refuses_an_unknown_one():
    record = node(1)
    changed = record.replace(status=NodeStatus.Stopped, failure="gone")

    assert (changed.status, changed.failure) == (NodeStatus.Stopped, "gone")
    assert changed == NodeRecord(
        **{**record.__dict__, "status": NodeStatus.Stopped, "failure": "gone"}
    )
    assert record.status is NodeStatus.Running  # the original is unchanged
    with pytest.raises(TypeError, match="no field 'colour'"):
        record.replace(colour="blue")


async def test_a_long_read_apart_holds_up_no_commit(tmp_path):
    reading, finish = threading.Event(), threading.Event()

    def slow_listing(store: Store) -> list[str]:
        reading.set()
        finish.wait(10)
        return [record.id for record in store.nodes()]

    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        await db.write(db.store.save_node, node(1))
        async with anyio.create_task_group() as tasks:
            listed: list[list[str]] = []

            async def list_apart() -> None:
                listed.append(await db.apart(slow_listing))

            tasks.start_soon(list_apart)
            await anyio.to_thread.run_sync(reading.wait, 10)
            with anyio.fail_after(5):  # the read holds no lock the commit needs
                await db.write(db.store.save_node, node(2))
            finish.set()
        assert listed == [["id-1", "id-2"]]  # it read once let go
        assert [record.id for record in await db.apart(Store.nodes)] == [
            "id-1",
            "id-2",
        ]
    db.store.close()


async def test_a_read_apart_sees_every_write_queued_before_it(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        for n in range(3):
            db.write_nowait(db.store.save_node, node(n))

        listed = await db.apart(Store.nodes)

        assert [record.name for record in listed] == ["node-0", "node-1", "node-2"]
    db.store.close()


async def test_the_second_connection_only_reads(tmp_path):
    store = Store(tmp_path / "s.db")
    try:
        with pytest.raises(Exception, match="readonly"):
            store.apart(Store.save_node, node(1))
        assert store.nodes() == []
    finally:
        store.close()


def test_a_write_that_fails_is_rolled_back_alone_and_the_others_kept(tmp_path):
    store = Store(tmp_path / "s.db")

    def half_done_then_fails(record: NodeRecord) -> None:
        store.save_node(record)  # written, then undone with its failure
        raise RuntimeError("disk full")

    try:
        results = store.apply(
            [
                (store.save_node, (node(1),)),
                (half_done_then_fails, (node(2),)),
                (store.save_node, (node(3),)),
            ]
        )

        assert [type(result) for result in results] == [
            NodeRecord,
            RuntimeError,
            NodeRecord,
        ]
        assert [record.id for record in store.nodes()] == ["id-1", "id-3"]
    finally:
        store.close()


def test_writes_that_all_succeed_commit_together(tmp_path):
    store = Store(tmp_path / "s.db")
    try:
        results = store.apply([(store.save_node, (node(n),)) for n in range(3)])

        assert [result.id for result in results] == ["id-0", "id-1", "id-2"]
        assert [record.id for record in store.nodes()] == ["id-0", "id-1", "id-2"]
    finally:
        store.close()


def test_a_store_named_by_a_relative_path_opens_for_reading(tmp_path, monkeypatch):
    Store(tmp_path / "s.db").close()
    monkeypatch.chdir(tmp_path)

    store = Store.open_readonly(Path("s.db"))
    try:
        assert store.nodes() == []
    finally:
        store.close()
