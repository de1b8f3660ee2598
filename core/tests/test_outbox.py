"""The durable outbox: numbered, kept until confirmed, sent again in order."""

import time

import anyio
import anyio.lowlevel
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2
from nodevisor._outbox import (
    BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    Outbox,
    batched,
    in_batches,
)
from nodevisor._store import Store, StoreRunner

pytestmark = pytest.mark.anyio


def result(n: int) -> command_flow_pb2.InfoUpdate:
    info = command_flow_pb2.CommandInfo(
        id=common_pb2.Uuid(value=f"c-{n}"), exit_code=0, response="ok"
    )
    return command_flow_pb2.InfoUpdate(command=info)


def parse(payload: bytes) -> tuple[int, str]:
    update = command_flow_pb2.InfoUpdate.FromString(payload)
    return update.seq, update.command.id.value


async def take(outbox: Outbox, count: int) -> list[tuple[int, str]]:
    taken = []
    for _ in range(count):
        taken.append(parse(await outbox.next()))
        outbox.sent()
    return taken


async def test_updates_are_numbered_in_order_and_kept_until_confirmed(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(3):
            outbox.put(result(n))
        first = await take(outbox, 3)
        assert [name for _, name in first] == ["c-0", "c-1", "c-2"]
        seqs = [seq for seq, _ in first]
        assert seqs == sorted(seqs) and seqs[0] > 0

        # a new stream sends every unconfirmed update again
        assert outbox.rewind() == 3
        assert await take(outbox, 3) == first

        outbox.confirm(seqs[1])
        assert len(outbox) == 1
        assert outbox.rewind() == 1
        assert await take(outbox, 1) == first[2:]
    db.store.close()


async def test_unconfirmed_updates_survive_a_restart(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(4):
            outbox.put(result(n))
        sent = await take(outbox, 4)
        outbox.confirm(sent[0][0])
    db.store.close()

    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        again = Outbox(db)
        await again.load()
        assert again.rewind() == 3
        assert await take(again, 3) == sent[1:]
    db.store.close()


async def test_an_oversize_update_is_dropped_locally(tmp_path, caplog):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        huge = command_flow_pb2.InfoUpdate(
            command=command_flow_pb2.CommandInfo(response="x" * (MAX_MESSAGE_BYTES + 1))
        )
        outbox.put(huge)
        outbox.put(result(1))
        assert len(outbox) == 1
        assert "over the 4194304-byte message limit" in caplog.text
        assert [name for _, name in await take(outbox, 1)] == ["c-1"]
    db.store.close()


async def test_an_update_that_cannot_be_built_is_dropped(tmp_path, caplog):
    class Broken:
        def SerializeToString(self):
            raise ValueError("half-built")

    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        outbox.put(Broken())
        outbox.put(result(2))
        assert len(outbox) == 1
        assert "cannot serialise an update" in caplog.text
    db.store.close()


async def test_leaving_the_runner_commits_every_queued_write(tmp_path):
    store = Store(tmp_path / "s.db")
    async with StoreRunner(store) as db:
        for n in range(200):
            db.write_nowait(store.outbox_add, f"update {n}".encode())
        await anyio.lowlevel.checkpoint()  # the flusher takes a batch and works
        for n in range(200, 400):
            db.write_nowait(store.outbox_add, f"update {n}".encode())
    assert len(store.outbox()) == 400
    store.close()


def _fails(message: str) -> None:
    raise RuntimeError(message)


async def test_an_update_queued_together_with_a_failed_write_is_not_sent(tmp_path):
    """A report and the record it reports commit together or not at all: a
    record that cannot be written takes its report with it, and the updates
    around them are sent as usual."""
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        outbox.put(result(0))
        with db.together():
            record = db.write_nowait(_fails, "the record cannot be written")
            outbox.put(result(1))
        outbox.put(result(2))
        with pytest.raises(RuntimeError, match="cannot be written"):
            await record
        assert [name for _, name in await take(outbox, 2)] == ["c-0", "c-2"]
        assert len(outbox) == 2
    rows = db.store.outbox()
    assert [
        command_flow_pb2.InfoUpdate.FromString(p).command.id.value for _, p in rows
    ] == [
        "c-0",
        "c-2",
    ]
    db.store.close()


async def test_writes_queued_together_commit_together(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        with db.together():
            first = db.write_nowait(db.store.outbox_add, b"first")
            outbox.put(result(1))
        assert await first > 0
        assert [name for _, name in await take(outbox, 1)] == ["c-1"]
    assert db.store.outbox()[0][1] == b"first"
    db.store.close()


async def test_a_confirmation_adds_no_commit_of_its_own(tmp_path, monkeypatch):
    """Which updates the control plane confirmed is bookkeeping: it commits
    with the next batch, or on its own within a second when nothing else
    comes, and at the latest when the runner is left."""
    monkeypatch.setattr(StoreRunner, "UNHURRIED", 0.3)
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(3):
            outbox.put(result(n))
        sent = await take(outbox, 3)
        outbox.confirm(sent[0][0])
        assert len(outbox) == 2  # in memory at once
        await anyio.sleep(0.05)
        assert len(db.store.outbox()) == 3  # not committed on its own yet
        outbox.put(result(3))  # a batch that the confirmation joins
        await take(outbox, 1)
        assert len(db.store.outbox()) == 3  # 3 left of 4
        outbox.confirm(sent[1][0])
        await anyio.sleep(0.1)
        assert len(db.store.outbox()) == 3
        await anyio.sleep(0.5)  # past UNHURRIED: committed on its own
        assert len(db.store.outbox()) == 2
        outbox.confirm(sent[2][0])
    assert [seq for seq, _ in db.store.outbox()] == [sent[2][0] + 1]
    db.store.close()


async def test_a_confirmation_that_overtakes_its_write_is_taken_in_stride(tmp_path):
    """The control plane can store and confirm an update before the write
    that sent it has returned to the agent: the update leaves the outbox
    then, and the next one is still sent, not skipped."""
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(2):
            outbox.put(result(n))
        first = parse(await outbox.next())
        outbox.confirm(first[0])  # while the write is still returning
        outbox.sent()
        with anyio.fail_after(2):  # not skipped: it is there to send
            assert parse(await outbox.next())[1] == "c-1"
        outbox.sent()
        assert outbox.waiting_since() is not None  # c-1 awaits confirmation

        outbox.confirm(first[0] + 1)
        outbox.put(result(2))
        third = parse(await outbox.next())
        outbox.confirm(third[0])  # the last one overtaken: nothing left
        outbox.sent()
        assert len(outbox) == 0
        outbox.put(result(3))
        assert parse(await outbox.next())[1] == "c-3"
        outbox.sent()
    db.store.close()


async def test_updates_a_stream_carried_long_enough_ago_count_as_delivered(tmp_path):
    """For a control plane that never confirms: what the stream sent before
    the given time leaves the outbox; what it sent later, or not yet, stays
    to go out again on the next stream."""
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(4):
            outbox.put(result(n))
        await take(outbox, 2)
        cutoff = time.monotonic()
        await anyio.sleep(0.01)
        await take(outbox, 1)

        outbox.carried(before=cutoff)

        assert len(outbox) == 2
        assert outbox.rewind() == 2
        assert [name for _, name in await take(outbox, 2)] == ["c-2", "c-3"]
        outbox.carried(before=time.monotonic())
        assert len(outbox) == 0
    db.store.close()
    store = Store(tmp_path / "s.db")
    assert store.outbox() == []
    store.close()


def unbatch(message: bytes) -> list[tuple[int, str]]:
    update = command_flow_pb2.InfoUpdate.FromString(message)
    assert update.WhichOneof("info") == "batch"
    return [(u.seq, u.command.id.value) for u in update.batch.updates]


async def test_updates_durable_together_are_taken_together_in_order(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(5):
            outbox.put(result(n))

        payloads = await outbox.take(BATCH_BYTES)
        outbox.sent()

        taken = unbatch(batched(payloads))
        assert [name for _, name in taken] == [f"c-{n}" for n in range(5)]
        assert [parse(p) for p in payloads] == taken
        seqs = [seq for seq, _ in taken]
        assert seqs == sorted(seqs) and seqs[0] > 0
        # sent, not confirmed: a new stream sends them all again, in order
        assert outbox.rewind() == 5
        assert [parse(p) for p in await outbox.take(BATCH_BYTES)] == taken
    db.store.close()


async def test_a_take_is_bounded_by_count_and_bytes(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        for n in range(6):
            outbox.put(result(n))
        one = len(await outbox.next())

        assert len(await outbox.take(BATCH_BYTES, most=2)) == 2
        assert len(await outbox.take(2 * one + 12)) == 2  # two and their framing
        assert len(await outbox.take(0)) == 1  # the default: one at a time
        outbox.sent()
        assert [parse(p)[1] for p in await outbox.take(BATCH_BYTES)] == [
            f"c-{n}" for n in range(1, 6)
        ]
    db.store.close()


async def test_a_take_stops_before_an_update_not_yet_durable(tmp_path):
    async with StoreRunner(Store(tmp_path / "s.db")) as db:
        outbox = Outbox(db)
        outbox.put(result(0))
        await outbox.take(BATCH_BYTES)  # c-0 is durable
        outbox.put(result(1))  # queued, its write not yet committed

        assert [parse(p)[1] for p in await outbox.take(BATCH_BYTES)] == ["c-0"]
        outbox.sent()
        assert [parse(p)[1] for p in await outbox.take(BATCH_BYTES)] == ["c-1"]
    db.store.close()


def test_a_batch_is_the_updates_as_they_stand():
    payloads = [result(n).SerializeToString() for n in range(3)]
    big = result(9)
    big.command.response = "x" * 300  # a length that takes two bytes

    assert batched(payloads[:1]) == payloads[0]
    message = command_flow_pb2.InfoUpdate.FromString(
        batched([*payloads, big.SerializeToString()])
    )
    assert list(message.batch.updates) == [*map(result, range(3)), big]


def test_updates_are_cut_into_batches_no_larger_than_asked():
    payloads = [result(n).SerializeToString() for n in range(10)]
    size = len(payloads[0])

    messages = in_batches(payloads, max_bytes=3 * (size + 6))

    assert [len(unbatch(m)) for m in messages[:-1]] == [3, 3, 3]
    assert messages[-1] == payloads[9]
    assert in_batches(payloads, max_bytes=0) == payloads
