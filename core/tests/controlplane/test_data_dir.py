"""The control plane's data dir: one control plane at a time, and its files."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

import pytest

from nodevisor.controlplane import DataDirLocked, DataDirUnusable, Unavailable
from nodevisor.controlplane._server import DATABASE_FILE, check_listen
from nodevisor.controlplane.testing import RunningControlPlane, running_control_plane

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_a_second_control_plane_on_the_data_dir_is_refused(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()

    with pytest.raises(DataDirLocked) as caught:
        async with running_control_plane(cp.data_dir):
            pass

    message = str(caught.value)
    assert f"another control plane (pid {os.getpid()})" in message
    assert str(cp.data_dir) in message
    # The first one still serves, and its hosts were not marked offline or lost.
    [host] = await cp.admin.list_hosts()
    assert host.id == host_id
    assert await cp.admin.create_otp()


async def test_the_data_dir_is_free_again_once_its_control_plane_stops(
    tmp_path: Path,
) -> None:
    async with running_control_plane(tmp_path / "cp") as first:
        host_id, _ = await first.provision()

    async with running_control_plane(tmp_path / "cp") as second:
        assert [host.id for host in await second.admin.list_hosts()] == [host_id]


def assert_one_sentence_naming(error: DataDirUnusable, path: Path) -> None:
    message = str(error)
    assert str(path) in message
    assert "\n" not in message
    assert message.startswith(f"cannot use {str(path)!r} as the data dir")


async def test_a_regular_file_as_the_data_dir_is_unusable(tmp_path: Path) -> None:
    data_dir = tmp_path / "cp"
    data_dir.write_text("not a directory")

    with pytest.raises(DataDirUnusable) as caught:
        async with running_control_plane(data_dir):
            pass

    assert_one_sentence_naming(caught.value, data_dir)
    assert data_dir.read_text() == "not a directory"


async def test_a_directory_in_place_of_the_database_is_unusable_and_nothing_held(
    tmp_path: Path,
) -> None:
    """The data dir was locked before the database failed to open: the lock
    is let go, so the same data dir starts once it is repaired."""
    data_dir = tmp_path / "cp"
    (data_dir / DATABASE_FILE).mkdir(parents=True)

    await refused_then_starts_once_repaired(data_dir, (data_dir / DATABASE_FILE).rmdir)


async def test_a_file_that_is_no_database_is_unusable_and_nothing_held(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "cp"
    data_dir.mkdir()
    (data_dir / DATABASE_FILE).write_bytes(b"this is not an SQLite database" * 100)

    await refused_then_starts_once_repaired(data_dir, (data_dir / DATABASE_FILE).unlink)


async def refused_then_starts_once_repaired(data_dir: Path, repair) -> None:
    """The database cannot be opened: one sentence naming the data dir and
    the database; once ``repair`` has run, the same data dir starts."""
    with pytest.raises(DataDirUnusable) as caught:
        async with running_control_plane(data_dir):
            pass

    assert_one_sentence_naming(caught.value, data_dir)
    assert DATABASE_FILE in str(caught.value)
    repair()
    async with running_control_plane(data_dir) as cp:
        assert await cp.admin.list_hosts() == []


async def test_the_database_files_are_owner_only(cp: RunningControlPlane) -> None:
    await cp.provision()  # a write: the WAL holds it

    database = cp.data_dir / DATABASE_FILE
    assert mode(database) == 0o600
    for suffix in ("-wal", "-shm"):
        assert mode(database.with_name(database.name + suffix)) == 0o600
    assert mode(cp.data_dir) & 0o077 == 0


async def test_a_readable_database_left_behind_is_made_owner_only(
    tmp_path: Path,
) -> None:
    """A database, WAL and shared memory that an earlier run (or an older
    version) left readable by all become 0600 on start."""
    data_dir = tmp_path / "cp"
    data_dir.mkdir()
    database = data_dir / DATABASE_FILE
    files = [database] + [
        database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")
    ]
    # An open connection keeps its WAL and shared memory, as a crash would.
    earlier = sqlite3.connect(database, isolation_level=None)
    try:
        earlier.execute("PRAGMA journal_mode=WAL")
        earlier.execute("CREATE TABLE left_behind (x)")
        for path in files:
            path.chmod(0o644)
        assert all(mode(path) == 0o644 for path in files)

        async with running_control_plane(data_dir) as cp:
            await cp.provision()
            assert {path.name: mode(path) for path in files} == {
                path.name: 0o600 for path in files
            }
    finally:
        earlier.close()


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:99999", "nonsense", "127.0.0.1", "dns:///127.0.0.1:0"]
)
async def test_a_listen_address_not_host_port_is_refused_before_the_data_dir(
    tmp_path: Path, listen: str
) -> None:
    with pytest.raises(ValueError, match=r"host:port"):
        async with running_control_plane(tmp_path / "cp", listen=listen):
            pass

    assert not (tmp_path / "cp").exists()


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:0", "[::1]:65535", "localhost:50051", "0.0.0.0:0"]
)
def test_a_listen_address_host_port_is_taken(listen: str) -> None:
    assert check_listen(listen) == listen


async def test_an_address_in_use_is_refused_with_its_cause_before_anything_is_made(
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(Unavailable, match="Address already in use"):
            async with running_control_plane(tmp_path / "cp", listen):
                pass

    assert not (tmp_path / "cp").exists()
