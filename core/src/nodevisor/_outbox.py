"""Updates on their way to the control plane, kept until it confirms them.

Every update is serialised once, written to the store's outbox table, and
sent only after that write is committed; its row number is its sequence
number (``InfoUpdate.seq``). The control plane confirms what it stored with
``UpdatesReceived{up_to}``; confirmed updates leave the outbox. A new stream
sends every unconfirmed update again, oldest first. A control plane that
never confirms gets at-least-once delivery of another kind: what a stream
carried counts as delivered (``carried``). A control plane that confirms
says so when the stream opens, in its response headers
(``CONFIRMS_UPDATES_HEADER``), so that an agent fresh from a restart never
mistakes it for one that does not while it is slow to store.

Toward a control plane that reads batches (``BATCHES_HEADER``), updates that
are durable at the same moment go out together, in one ``InfoUpdateBatch``
(``take`` and ``batched``): under load, one message of the stream then
carries the acks, transitions and results of many commands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from blockjoy.api.v1 import command_flow_pb2

from ._store import StoreRunner, WriteAbandoned

__all__ = [
    "BATCHES_HEADER",
    "BATCH_BYTES",
    "CONFIRMS_UPDATES_HEADER",
    "MAX_MESSAGE_BYTES",
    "Outbox",
    "batched",
    "grouped",
    "in_batches",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The largest message either side sends or accepts.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: The response header, with the value ``"1"``, of a control plane that
#: confirms updates with ``UpdatesReceived``.
CONFIRMS_UPDATES_HEADER = "nodevisor-confirms-updates"

#: The header, with the value ``"1"``, by which each side of a stream says it
#: reads batches: the agent in its request headers (``CommandBatch``), the
#: control plane in its response headers (``InfoUpdateBatch``).
BATCHES_HEADER = "nodevisor-batches"

#: The most bytes of updates one batch carries. A batch is only made of
#: updates that are ready together; a larger single update goes on its own.
BATCH_BYTES = 512 * 1024


@dataclass(eq=False)  # entries are told apart by identity
class _Entry:
    payload: bytes
    written: asyncio.Future[int]
    sent_at: float | None = None

    @property
    def seq(self) -> int | None:
        if self.written.done() and self.written.exception() is None:
            return self.written.result()
        return None


class Outbox:
    def __init__(self, db: StoreRunner) -> None:
        self._db = db
        self._entries: deque[_Entry] = deque()
        self._cursor = 0
        #: The updates ``take`` returned, until ``sent`` is told they went out.
        self._sending: list[_Entry] = []
        self._ready = anyio.Event()
        self._empty = anyio.Event()
        self._empty.set()

    def __len__(self) -> int:
        """How many updates wait for the control plane's confirmation."""
        return len(self._entries)

    async def load(self) -> None:
        """Take up the updates a previous run left unconfirmed."""
        loop = asyncio.get_running_loop()
        for seq, payload in await self._db(self._db.store.outbox):
            written: asyncio.Future[int] = loop.create_future()
            written.set_result(seq)
            self._entries.append(_Entry(bytes(payload), written))
        if self._entries:
            self._empty = anyio.Event()
            log.info("%d unconfirmed updates from the last run", len(self._entries))

    def put(self, update: command_flow_pb2.InfoUpdate) -> None:
        """Queue an update. One that cannot be built or is too large is dropped."""
        try:
            payload = update.SerializeToString()
        except Exception:  # one broken update must not stop the others
            log.exception("cannot serialise an update; dropping it")
            return
        if len(payload) > MAX_MESSAGE_BYTES:
            log.error(
                "dropping a %s update of %d bytes: over the %d-byte message limit",
                update.WhichOneof("info"),
                len(payload),
                MAX_MESSAGE_BYTES,
            )
            return
        result_of = None
        if update.HasField("command") and update.command.HasField("exit_code"):
            result_of = update.command.id.value or None
        written = self._db.write_nowait(self._db.store.outbox_add, payload, result_of)
        self._entries.append(_Entry(payload, written))
        self._ready.set()
        if self._empty.is_set():
            self._empty = anyio.Event()

    def rewind(self) -> int:
        """Start over for a new stream; how many updates it must send again."""
        self._cursor = 0
        self._sending = []
        return len(self._entries)

    async def next(self) -> bytes:
        """The next update to send, with its number, once it is durable."""
        return (await self.take())[0]

    async def take(self, max_bytes: int = 0, most: int | None = None) -> list[bytes]:
        """The next updates to send, each with its number, once durable.

        The first waits until it is durable; those after it are added while
        they are durable already, number at most ``most`` in all and come to
        at most ``max_bytes`` together (with the default 0, one update).
        ``sent()`` is then told that they went out.
        """
        payload = await self._first()
        taken, size = [payload], len(payload)
        index = self._cursor + 1
        while index < len(self._entries) and (most is None or len(taken) < most):
            entry = self._entries[index]
            seq = entry.seq  # None while it is written, or if it failed
            if not seq:
                break  # sent by a later ``take``, which waits or drops it
            payload = entry.payload + _numbered(seq)
            size += len(payload) + _FRAMING
            if size > max_bytes:
                break
            taken.append(payload)
            self._sending.append(entry)
            index += 1
        return taken

    async def _first(self) -> bytes:
        while True:
            while self._cursor >= len(self._entries):
                self._ready = anyio.Event()
                await self._ready.wait()
            entry = self._entries[self._cursor]
            try:
                seq = await asyncio.shield(entry.written)
            except WriteAbandoned as exc:
                # Written together with a record that could not be: what it
                # reports did not happen.
                log.debug("dropping an update whose record failed: %s", exc)
                self._drop(entry)
                continue
            except Exception as exc:  # not durable: send it once, unnumbered
                log.error("an update could not be stored (%r); sending it anyway", exc)
                seq = 0
            self._sending = [entry]
            return entry.payload + _numbered(seq)

    def _drop(self, entry: _Entry) -> None:
        # Only unnumbered entries are dropped, and no confirmation takes those.
        self._entries.remove(entry)
        if not self._entries:
            self._empty.set()

    def sent(self) -> None:
        """The updates ``take`` returned went out on the stream.

        The control plane may have confirmed some already, while the write
        was still returning: those have left the outbox, and the cursor
        stands on the next update, which is yet to be sent.
        """
        sending, self._sending = self._sending, []
        now = time.monotonic()
        for entry in sending:
            entry.sent_at = now
            if entry.seq is None:
                self._drop(entry)  # unnumbered: nothing will confirm it
            elif (
                self._cursor < len(self._entries)
                and self._entries[self._cursor] is entry
            ):
                self._cursor += 1

    def confirm(self, up_to: int) -> None:
        """The control plane stored every update up to ``up_to``."""
        while self._entries:
            seq = self._entries[0].seq
            if seq is None or seq > up_to:
                break
            self._entries.popleft()
            self._cursor = max(0, self._cursor - 1)
        if not self._entries:
            self._empty.set()
        # Unhurried: after a crash, confirmed updates still in the table are
        # only sent again, and the control plane takes repeats.
        self._db.write_unhurried(self._db.store.outbox_confirm, up_to)

    def carried(self, before: float) -> None:
        """Count updates the current stream sent before ``before`` as delivered.

        ``before`` is a ``time.monotonic()`` time. For a control plane that
        never confirms (a plain v1 peer), an update the stream carried a
        while ago, on a stream still open, is as delivered as it gets;
        without this, its updates would pile up and go out again on every
        stream.
        """
        up_to = None
        for entry in itertools.islice(self._entries, self._cursor):
            if entry.sent_at is None or entry.sent_at > before:
                break
            up_to = entry.seq
        if up_to is not None:
            self.confirm(up_to)

    def waiting_since(self) -> float | None:
        """When the oldest update sent but not confirmed went out, if any."""
        if self._entries and self._cursor > 0:
            return self._entries[0].sent_at
        return None

    async def wait_empty(self) -> None:
        """Return once the control plane has confirmed every update."""
        await self._empty.wait()


def batched(payloads: list[bytes]) -> bytes:
    """One message carrying ``payloads``, serialised ``InfoUpdate``s, in order.

    A single update is its own message. Several go in the ``batch`` of one
    ``InfoUpdate``, framed as the repeated field ``InfoUpdateBatch.updates``
    as they stand, unparsed.
    """
    if len(payloads) == 1:
        return payloads[0]
    inner = b"".join(_length_delimited(_UPDATES_FIELD, p) for p in payloads)
    return _length_delimited(_BATCH_FIELD, inner)


def in_batches(payloads: list[bytes], max_bytes: int = BATCH_BYTES) -> list[bytes]:
    """``payloads`` as messages: batches of at most ``max_bytes``, in order."""
    return [batched(group) for group in grouped(payloads, len, max_bytes)]


def grouped(
    items: Iterable[T], size: Callable[[T], int], max_bytes: int = BATCH_BYTES
) -> list[list[T]]:
    """``items`` in order, cut into groups of at most ``max_bytes`` once
    framed in a batch; an item too large to share is a group of its own."""
    groups: list[list[T]] = []
    total = 0
    for item in items:
        length = size(item) + _FRAMING
        if not groups or total + length > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += length
    return groups


#: Field numbers of ``InfoUpdateBatch.updates`` and ``InfoUpdate.batch``.
_UPDATES_FIELD = command_flow_pb2.InfoUpdateBatch.UPDATES_FIELD_NUMBER
_BATCH_FIELD = command_flow_pb2.InfoUpdate.BATCH_FIELD_NUMBER
#: What framing adds to an item in a batch, at most: a tag and a length.
_FRAMING = 6


def _length_delimited(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _numbered(seq: int) -> bytes:
    # Serialised messages concatenate as a merge, so appending the encoded
    # seq field numbers an update without serialising it again.
    return command_flow_pb2.InfoUpdate(seq=seq).SerializeToString()
