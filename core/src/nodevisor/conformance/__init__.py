"""The conformance kit: the checks every nodevisor runtime must pass.

A runtime plugin proves it keeps the runtime contract by running this suite
against itself. Write one test module::

    import pytest
    from nodevisor.conformance import ConformanceSuite, Harness

    from my_runtime import MyRuntime

    class TestMyRuntime(ConformanceSuite):
        @pytest.fixture
        def harness(self, tmp_path) -> Harness:
            return Harness(
                runtime_class=MyRuntime,
                data_dir=tmp_path / "runtime",
                settings={},
                images=("my/image:1", "my/image:2"),
                node={"command": ["sleep", "600"], "data_path": "/data",
                      "stop_signal": "SIGTERM", "grace_period": 5},
            )

and run ``pytest``. Nothing else is needed: the suite is marked for anyio
and brings its own ``anyio_backend`` fixture ("asyncio"), so a package with
no conftest of nodevisor's runs it as it is. Every check builds its own host
id (``conformance-<hex>``) and node ids, and deletes every node it created
when it ends, pass or fail.

The harness
-----------

``Harness`` is a dataclass; all fields are keyword arguments.

``runtime_class``
    The ``nodevisor.Runtime`` subclass under test.
``data_dir``
    ``RuntimeContext.data_dir`` of every runtime instance the suite builds.
``settings``
    ``RuntimeContext.settings`` (the ``[runtimes.<name>]`` table).
``images``
    Two different image references of your runtime. Nodes are created on
    the first and upgraded to the second. The nodes must keep running until
    stopped and need not do anything else.
``node``
    The other ``NodeSpec`` fields of every node: ``command``, ``ports``,
    ``data_path``, ``stop_signal``, ``grace_period``, ``environment``,
    ``options``. Keep ``grace_period`` small: normal nodes should exit on
    their stop signal.
``stubborn_node``
    ``NodeSpec`` field changes that make a node ignore its stop signal, for
    the grace-period check, for example a command that traps SIGTERM and a
    grace period of 2 seconds. ``None`` (the default) skips that check.
``unreachable_settings``
    ``settings`` that point the runtime at an engine that does not answer,
    for example a socket path nothing listens on. ``None`` (the default)
    skips that check; a runtime with no engine of its own leaves it out.
``timeout``
    Seconds any one call of the runtime, or of a harness coroutine, may
    take (60 by default). A call that overruns it fails the check with a
    message naming the method and the node, instead of hanging the run.
``margin``
    Seconds a ``stop`` may take past the node's grace period, and an
    ``exec`` past its own timeout (5 by default): the time to kill and to
    answer. Widen it on a slow machine.

Subclass ``Harness`` to override these coroutines; the defaults use
``Runtime.exec`` and skip the check, naming the method, when the runtime
declares no exec capability:

``write_data(runtime, spec, name, content)``
    Write the file ``name`` with ``content`` into the running node's chain
    data (under ``spec.data_path``). The default runs
    ``sh -c 'printf "%s" "$1" > "$0"' <path> <content>``: both values travel
    as arguments, never inside the script.
``read_data(runtime, spec, name) -> str | None``
    The content of the file ``name`` in the running node's data, or ``None``
    if it is absent. The default runs ``cat <path>``; override it if the
    node's image has no ``cat`` on its path.
``remove_out_of_band(runtime, spec)``
    Remove the node behind the runtime's back, as an operator with the
    engine's own tools would. The default skips the check.
``stop_out_of_band(runtime, spec)``
    Kill the running node behind the runtime's back, as a crash would
    (``docker kill``, ``virsh destroy``). The default skips the check.

The checks
----------

Capabilities switch checks off visibly: a runtime without snapshot gets a
skip saying "runtime 'x' declares no snapshot capability", never a pass.

- The agent's state machine (a real ``NodeManager`` with a catalogue the
  kit writes from ``images`` and ``node``) drives the runtime and reports
  exactly: create Installing, Creating, Stopped; start Starting, Running;
  restart Stopping, Stopped, Starting, Running; stop Stopping, Stopped;
  delete Deleting, Deleted; upgrade Upgrading, Upgraded, Running, after
  which ``inspect`` shows the second image; snapshot (capability
  ``snapshot``) Snapshotting, Starting, Running, with a file written.
- A second create with the same node id succeeds and makes no second node;
  a create with a taken name fails with ``Conflict`` naming the holder.
- Start of a running node, stop twice, delete twice and delete of a node
  that never existed all succeed; a normal node stops cleanly.
- Data written before an upgrade is read back after it; after delete, a
  node re-created with the same id has none of it.
- A node removed out of band is absent from ``inspect`` and
  ``list_nodes``, and deleting it still succeeds. A node killed out of
  band is ``STOPPED`` in both, and a ``start`` brings it back.
- With its engine out of reach, ``check`` and ``list_nodes`` raise
  ``RuntimeUnavailable`` with a message: the agent then waits for the
  engine instead of giving up on its nodes.
- What ``inspect`` and ``list_nodes`` return has the contract's form: a
  ``RuntimeNode`` of the node asked for, ``RUNNING`` or ``STOPPED``, or
  ``None`` for a node that does not exist.
- A fresh runtime instance with the same context (an agent restart) lists
  and inspects the nodes the previous one created, and stops and deletes
  them.
- ``list_nodes`` of a runtime for another host id, sharing the data
  directory and engine, is empty; its ``inspect`` finds nothing, and its
  ``delete`` leaves the first host's node alone.
- Stop of a stubborn node waits at least 90% of its grace period before
  killing, and reports an unclean ``StopOutcome`` with a detail.
- ``start`` of an unknown node raises ``RuntimeFailure`` whose message
  holds the node id; ``prepare`` of an image that does not exist raises
  ``ImageUnavailable`` naming the image.
- ``exec`` (capability ``exec``; the image needs ``sh``) passes argv
  unchanged, without a shell of its own, and returns exit code, stdout and
  stderr; a non-zero exit code is a result, not an exception. A command
  that outlives its timeout (a shell loop, given 1 second) raises
  ``RuntimeFailure`` naming the node; so does a program that does not
  exist in the node, naming the program.
"""

from __future__ import annotations

import pytest

# The checks live in this package, not in the author's test module: without
# this, pytest would not rewrite their asserts, and a failed check would say
# only "AssertionError", with none of the values it compared.
pytest.register_assert_rewrite(
    "nodevisor.conformance._common", "nodevisor.conformance._suite"
)

from ._harness import Harness  # noqa: E402
from ._suite import ConformanceSuite  # noqa: E402

__all__ = ["ConformanceSuite", "Harness"]
