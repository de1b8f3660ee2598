"""The checks every runtime must pass, as one pytest class to subclass."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from .._errors import Conflict, ImageUnavailable, RuntimeFailure, RuntimeUnavailable
from .._runtime import NodeState
from ._bench import Bench, create_message, node_name, upgrade_message
from ._common import (
    DATA_FILE,
    failure,
    found,
    ids,
    require_hook,
    running,
    skip_without,
    state,
)
from ._harness import Harness

__all__ = ["ConformanceSuite"]

_CREATE = ["Installing", "Creating", "Stopped"]
_START = ["Starting", "Running"]
_STOP = ["Stopping", "Stopped"]
_DELETE = ["Deleting", "Deleted"]
_UPGRADE = ["Upgrading", "Upgraded", "Running"]
_SNAPSHOT = ["Snapshotting", "Starting", "Running"]
# Shell words that a runtime passing argv through a shell would mangle.
_AWKWARD = 'it\'s $HOME; `true` | * "quoted" \\'
_EXEC_TIMEOUT = 30.0


class ConformanceSuite:
    """Subclass it as ``Test<YourRuntime>`` and give it a ``harness`` fixture."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    def harness(self) -> Harness:
        raise pytest.UsageError(
            f"{type(self).__name__} must define a `harness` fixture that returns "
            "a nodevisor.conformance.Harness"
        )

    @pytest.fixture
    async def conformance_bench(
        self, anyio_backend: str, harness: Harness, tmp_path_factory
    ) -> AsyncIterator[Bench]:
        bench = Bench(harness, Path(tmp_path_factory.mktemp("conformance")))
        try:
            yield bench
        finally:
            await bench.aclose()

    # the agent's state machine drives the runtime

    async def test_lifecycle_reports_each_status(self, conformance_bench: Bench):
        bench, runtime = conformance_bench, conformance_bench.runtime
        manager, node_id = bench.manager, bench.new_id()

        await manager.create(node_id, create_message(node_name(node_id)))
        created = await state(runtime, node_id)
        await manager.start(node_id)
        started = await state(runtime, node_id)
        await manager.restart(node_id)
        await manager.stop(node_id)
        stopped = await state(runtime, node_id)
        await manager.delete(node_id)

        assert (created, started, stopped) == (
            NodeState.STOPPED,
            NodeState.RUNNING,
            NodeState.STOPPED,
        )
        expected = _CREATE + _START + _STOP + _START + _STOP + _DELETE
        assert bench.statuses(node_id) == expected
        assert await found(runtime, node_id) is None

    async def test_upgrade_reports_each_status(self, conformance_bench: Bench):
        bench, runtime = conformance_bench, conformance_bench.runtime
        skip_without(runtime, "upgrade")
        manager, node_id = bench.manager, bench.new_id()

        await manager.create(node_id, create_message(node_name(node_id)))
        await manager.start(node_id)
        await manager.upgrade(node_id, upgrade_message())
        upgraded = await found(runtime, node_id)
        await manager.delete(node_id)

        assert upgraded is not None
        assert (upgraded.state, upgraded.image) == (
            NodeState.RUNNING,
            bench.harness.images[1],
        )
        expected = _CREATE + _START + _UPGRADE + _STOP + _DELETE
        assert bench.statuses(node_id) == expected

    async def test_snapshot_reports_each_status(self, conformance_bench: Bench):
        bench, runtime = conformance_bench, conformance_bench.runtime
        skip_without(runtime, "snapshot")
        manager, node_id = bench.manager, bench.new_id()

        await manager.create(node_id, create_message(node_name(node_id)))
        await manager.snapshot(node_id)
        after = await state(runtime, node_id)

        assert bench.statuses(node_id) == _CREATE + _SNAPSHOT
        assert after is NodeState.RUNNING
        written = [p for p in (bench.snapshot_dir / node_id).rglob("*") if p.is_file()]
        assert written, f"no snapshot file of node {node_id} under the destination"

    async def test_create_of_a_taken_name_conflicts(self, conformance_bench: Bench):
        bench, manager = conformance_bench, conformance_bench.manager
        first, second = bench.new_id(), bench.new_id()
        name = node_name(first)

        await manager.create(first, create_message(name))
        with pytest.raises(Conflict, match=first):
            await manager.create(second, create_message(name))

        assert bench.statuses(second) == []
        assert await found(bench.runtime, second) is None

    async def test_create_of_an_existing_id_makes_no_second_node(
        self, conformance_bench: Bench
    ):
        bench, runtime = conformance_bench, conformance_bench.runtime
        node_id = bench.new_id()

        await bench.manager.create(node_id, create_message(node_name(node_id)))
        again = await bench.manager.create(node_id, create_message("another-name"))
        await runtime.create(bench.spec(node_id=node_id))

        assert "exists already" in again
        assert await ids(runtime) == [node_id]

    # every step may be repeated

    async def test_start_of_a_running_node_succeeds(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        spec = await running(runtime, conformance_bench.spec())

        await runtime.start(spec)

        assert await state(runtime, spec.id) is NodeState.RUNNING

    async def test_stop_twice_succeeds(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        spec = await running(runtime, conformance_bench.spec())

        first = await runtime.stop(spec)
        second = await runtime.stop(spec)

        assert first.clean, f"a normal node stopped uncleanly: {first.detail}"
        assert second.clean
        assert await state(runtime, spec.id) is NodeState.STOPPED

    async def test_delete_twice_succeeds(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        spec = await running(runtime, conformance_bench.spec())

        await runtime.delete(spec.id)
        await runtime.delete(spec.id)

        assert await found(runtime, spec.id) is None
        assert await ids(runtime) == []

    async def test_delete_of_an_unknown_node_succeeds(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        node_id = conformance_bench.new_id()

        await runtime.delete(node_id)

        assert await found(runtime, node_id) is None

    # chain data

    async def test_data_survives_upgrade_and_goes_with_delete(
        self, conformance_bench: Bench
    ):
        bench, runtime = conformance_bench, conformance_bench.runtime
        skip_without(runtime, "upgrade")
        manager = bench.manager
        node_id, marker = bench.new_id(), f"marker {uuid.uuid4()}"
        await manager.create(node_id, create_message(node_name(node_id)))
        await manager.start(node_id)
        spec = bench.spec(node_id=node_id)

        await bench.write_data(runtime, spec, DATA_FILE, marker)
        before = await bench.read_data(runtime, spec, DATA_FILE)
        await manager.upgrade(node_id, upgrade_message())
        upgraded = bench.spec("2", node_id=node_id)
        after = await bench.read_data(runtime, upgraded, DATA_FILE)
        await manager.delete(node_id)
        await running(runtime, spec)
        recreated = await bench.read_data(runtime, spec, DATA_FILE)

        assert before == marker, "the harness cannot read back what it wrote"
        assert after == marker, f"node {node_id} lost its data in the upgrade"
        assert recreated is None, f"node {node_id} kept its data through delete"

    # what happens outside the runtime

    async def test_node_removed_out_of_band_is_absent(self, conformance_bench: Bench):
        bench, runtime = conformance_bench, conformance_bench.runtime
        require_hook(bench.harness, "remove_out_of_band")
        spec = await running(runtime, bench.spec())

        await bench.remove_out_of_band(runtime, spec)
        after = await found(runtime, spec.id)
        listed = await ids(runtime)
        await runtime.delete(spec.id)

        assert after is None, f"inspect still finds the removed node: {after}"
        assert spec.id not in listed, "list_nodes still lists the removed node"

    async def test_node_stopped_out_of_band_is_stopped(self, conformance_bench: Bench):
        """A node that dies behind the runtime's back (its process or VM
        killed) shows as stopped, and a start brings it back."""
        bench, runtime = conformance_bench, conformance_bench.runtime
        require_hook(bench.harness, "stop_out_of_band")
        spec = await running(runtime, bench.spec())

        await bench.stop_out_of_band(runtime, spec)
        after = await state(runtime, spec.id)
        listed = {node.id: node.state for node in await runtime.list_nodes()}
        await runtime.start(spec)
        again = await state(runtime, spec.id)

        assert after is NodeState.STOPPED, (
            f"node {spec.id} was killed out of band, but inspect says {after.name}"
        )
        assert listed.get(spec.id) is NodeState.STOPPED, (
            f"node {spec.id} was killed out of band, but list_nodes says "
            f"{listed.get(spec.id)}"
        )
        assert again is NodeState.RUNNING, "a start did not bring the node back"

    async def test_new_instance_adopts_the_nodes(self, conformance_bench: Bench):
        bench = conformance_bench
        started = await running(bench.runtime, bench.spec())
        stopped = bench.spec()
        await bench.runtime.create(stopped)

        fresh = bench.open_runtime()
        listed = {n.id: n.state for n in await fresh.list_nodes()}
        adopted = await found(fresh, started.id)
        await fresh.stop(started)
        await fresh.delete(stopped.id)

        assert listed == {started.id: NodeState.RUNNING, stopped.id: NodeState.STOPPED}
        assert adopted is not None
        assert (adopted.id, adopted.name, adopted.image) == (
            started.id,
            started.name,
            started.image,
        )
        assert await state(bench.runtime, started.id) is NodeState.STOPPED
        assert await found(bench.runtime, stopped.id) is None

    async def test_list_nodes_shows_only_its_own_host(self, conformance_bench: Bench):
        bench = conformance_bench
        spec = await running(bench.runtime, bench.spec())

        other_host = bench.new_host_id()
        other = bench.open_runtime(other_host)
        listed = await ids(other)
        seen = await found(other, spec.id)
        await other.delete(spec.id)

        assert listed == [], f"another host's runtime lists {listed}"
        assert seen is None, f"another host's runtime finds node {spec.id}: {seen}"
        assert await state(bench.runtime, spec.id) is NodeState.RUNNING

        # and the other way round, with a node on each host
        theirs = bench.spec(host_id=other_host)
        await other.prepare(theirs)
        await other.create(theirs)
        mine = await ids(bench.runtime)
        assert theirs.id not in mine, (
            f"list_nodes() of host {bench.host_id} lists node {theirs.id} of "
            f"host {other_host}"
        )
        assert spec.id in mine, f"list_nodes() no longer lists node {spec.id}"
        assert await found(bench.runtime, theirs.id) is None, (
            f"inspect({theirs.id!r}) of host {bench.host_id} finds a node of "
            f"host {other_host}"
        )

    async def test_an_unreachable_engine_is_unavailable(self, conformance_bench: Bench):
        """With its engine out of reach, check() and list_nodes() raise
        RuntimeUnavailable: the agent then waits for the engine instead of
        giving up on the nodes."""
        bench = conformance_bench
        settings = bench.harness.unreachable_settings
        if settings is None:
            pytest.skip(
                f"the harness of runtime {bench.name!r} sets no unreachable_settings"
            )
        runtime = bench.open_runtime(settings=settings)

        checked = await failure(runtime.check())
        listed = await failure(runtime.list_nodes())

        for method, raised in (("check", checked), ("list_nodes", listed)):
            assert isinstance(raised, RuntimeUnavailable), (
                f"{method}() of runtime {bench.name!r} with its engine out of "
                f"reach raised {raised!r}, not nodevisor.RuntimeUnavailable"
            )
            assert str(raised), f"{method}() raised RuntimeUnavailable with no message"

    # stop and the grace period

    async def test_stop_honours_the_grace_period(self, conformance_bench: Bench):
        bench, runtime = conformance_bench, conformance_bench.runtime
        if bench.harness.stubborn_node is None:
            pytest.skip(
                f"the harness of runtime {runtime.name!r} sets no stubborn_node"
            )
        spec = await running(runtime, bench.spec(**bench.harness.stubborn_node))

        began = time.monotonic()
        outcome = await runtime.stop(spec)
        elapsed = time.monotonic() - began

        assert elapsed >= spec.grace_period * 0.9, (
            f"node {spec.id} was killed after {elapsed:.2f}s, before its grace "
            f"period of {spec.grace_period:g}s"
        )
        assert not outcome.clean, f"a killed node stopped cleanly: {outcome}"
        assert outcome.detail, "an unclean stop carries no detail"
        assert await state(runtime, spec.id) is NodeState.STOPPED

    # errors a person can act on

    async def test_start_of_an_unknown_node_names_it(self, conformance_bench: Bench):
        spec = conformance_bench.spec()

        with pytest.raises(RuntimeFailure) as raised:
            await conformance_bench.runtime.start(spec)

        assert spec.id in str(raised.value)

    async def test_prepare_of_a_missing_image_names_it(self, conformance_bench: Bench):
        image = f"nodevisor-conformance/no-such-image:{uuid.uuid4().hex[:12]}"
        spec = conformance_bench.spec(image=image)

        with pytest.raises(ImageUnavailable) as raised:
            await conformance_bench.runtime.prepare(spec)

        assert image in str(raised.value)

    # exec

    async def test_exec_passes_argv_without_a_shell(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        skip_without(runtime, "exec")
        spec = await running(runtime, conformance_bench.spec())
        argv = ["sh", "-c", 'printf "%s|%s" "$0" "$1"', _AWKWARD, "two words"]

        result = await runtime.exec(spec, argv, _EXEC_TIMEOUT)

        assert (result.exit_code, result.stdout) == (0, f"{_AWKWARD}|two words")

    async def test_exec_failure_is_a_result(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        skip_without(runtime, "exec")
        spec = await running(runtime, conformance_bench.spec())
        argv = ["sh", "-c", 'printf out; printf "%s" "$0" >&2; exit 3', "err"]

        result = await runtime.exec(spec, argv, _EXEC_TIMEOUT)

        assert (result.exit_code, result.stdout, result.stderr) == (3, "out", "err")

    async def test_exec_past_its_timeout_fails(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        skip_without(runtime, "exec")
        spec = await running(runtime, conformance_bench.spec())
        spin = ["sh", "-c", "while :; do :; done"]

        began = time.monotonic()
        with pytest.raises(RuntimeFailure) as raised:
            await runtime.exec(spec, spin, 1.0)
        elapsed = time.monotonic() - began

        assert spec.id in str(raised.value)
        assert elapsed < 1.0 + _EXEC_TIMEOUT, f"exec ran {elapsed:.1f}s past 1s"

    async def test_exec_of_a_missing_program_fails(self, conformance_bench: Bench):
        runtime = conformance_bench.runtime
        skip_without(runtime, "exec")
        spec = await running(runtime, conformance_bench.spec())
        program = f"no-such-program-{uuid.uuid4().hex[:8]}"

        with pytest.raises(RuntimeFailure) as raised:
            await runtime.exec(spec, [program], _EXEC_TIMEOUT)

        assert program in str(raised.value)
