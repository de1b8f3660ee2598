"""The contract between the agent and a runtime plugin.

A runtime runs nodes: Docker containers, virtual machines, plain processes.
The agent decides *what* should happen to a node and in which order (the
state machine lives in the agent); the runtime only carries out single steps.
Every step is idempotent, because the agent may repeat it after a crash or a
reconnect: creating a node that exists, stopping a stopped node or deleting a
node that is gone all succeed without doing anything.

A runtime labels everything it creates with the node id and the host id, and
touches nothing that does not carry its labels.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._interface import ProtocolInterface, Value

__all__ = [
    "CONTRACT_VERSION",
    "Capabilities",
    "ExecResult",
    "NodeSpec",
    "NodeState",
    "ProtocolStatus",
    "Runtime",
    "RuntimeContext",
    "RuntimeNode",
    "StopOutcome",
]

#: The version of this contract. A runtime declares the version it was built
#: for in ``Runtime.contract_version``; the agent refuses a different one.
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do beyond create, start, stop and delete.

    The agent answers "not supported" for a command that needs a capability
    the node's runtime lacks, without calling the runtime.
    """

    snapshot: bool = False
    upgrade: bool = True
    exec: bool = False
    #: The runtime answers ``protocol_status`` and ``protocol_command``.
    protocol: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """Everything a runtime needs to run one node.

    The agent builds it from the node's record and the protocol catalogue.
    ``image`` is the runtime's own reference (a Docker image tag, a disk
    image path), taken from the catalogue entry for this runtime.
    """

    id: str
    name: str
    #: The host the node belongs to; always ``RuntimeContext.host_id``.
    host_id: str
    protocol: str
    version: str
    image: str
    command: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    data_path: str = "/data"
    stop_signal: str = "SIGTERM"
    grace_period: float = 120.0
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Runtime-specific settings from the catalogue entry, as given there.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The protocol's methods and generic commands, from its spec.
    interface: ProtocolInterface = field(default_factory=ProtocolInterface)

    @property
    def url(self) -> str:
        """The node's image as the control plane names it."""
        return f"{self.protocol}/{self.version}"


class NodeState(enum.Enum):
    """A node's actual state as its runtime sees it."""

    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"


@dataclass(frozen=True)
class RuntimeNode:
    """One node as a runtime finds it on the host."""

    id: str
    name: str
    state: NodeState
    #: The runtime's image reference the node runs now.
    image: str = ""
    #: The protocol and version the node was created with, if the runtime
    #: recorded them (``protocol/version``).
    url: str = ""
    #: How the node's processes last ended, when it is stopped: for example
    #: "exited with code 0" or "killed by SIGKILL".
    detail: str = ""


@dataclass(frozen=True)
class StopOutcome:
    """How a stop ended. ``clean`` is false when the node had to be killed.

    An unclean stop was, unless ``outlived_grace`` is false, a node that did
    not exit within its grace period of its stop signal; otherwise ``detail``
    says why it was killed (its supervisor did not answer, say).
    """

    clean: bool
    detail: str = ""
    outlived_grace: bool = True


@dataclass(frozen=True)
class ExecResult:
    """What a command run inside a node printed, and how it ended."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class ProtocolStatus:
    """What a node says about its chain; ``None`` where it did not say."""

    block_height: int | None = None
    #: A ``NodeInfo.SyncStatus`` name: ``"Syncing"`` or ``"Synced"``.
    sync_status: str | None = None
    #: A ``NodeInfo.ApplicationStatus`` name, such as ``"Mining"``.
    app_status: str | None = None
    onchain_name: str | None = None
    peers: int | None = None


@dataclass(frozen=True)
class RuntimeContext:
    """What the agent hands a runtime when it builds one.

    The agent makes ``data_dir`` (``<agent data_dir>/runtimes/<name>``, mode
    0700 when new) before it builds the runtime, so that the constructor and
    every method find it there.
    """

    host_id: str
    #: A directory that belongs to this runtime alone, for its own files.
    data_dir: Path
    #: The ``[runtimes.<name>]`` table of the agent's config.
    settings: Mapping[str, Any] = field(default_factory=dict)


class Runtime(abc.ABC):
    """The base class of every runtime.

    Subclass it, set ``name`` and ``capabilities``, and implement the
    abstract methods. Every method but ``changes`` (which returns the feed)
    is a coroutine, an ``async def``: the agent refuses a class that defines
    one as a plain function. A runtime whose SDK blocks runs
    its calls in worker threads (``anyio.to_thread.run_sync``), never on the
    event loop. Raise ``RuntimeFailure`` with a message that names the node
    and what went wrong; chain the SDK's error as the cause.
    """

    #: The name operators use for this runtime in config, e.g. ``docker``:
    #: 1 to 32 lowercase letters, digits, ``-`` and ``_``, starting with a
    #: letter, for it also names the runtime's data directory.
    name: ClassVar[str]
    #: The contract version the runtime was built for.
    contract_version: ClassVar[int] = CONTRACT_VERSION
    #: What it can do; a ``Capabilities``, or the agent refuses the class.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context

    async def check(self) -> None:
        """Raise ``RuntimeFailure`` if the runtime cannot work (no engine)."""
        return None

    @abc.abstractmethod
    async def prepare(self, spec: NodeSpec) -> None:
        """Make the node's image available on this host.

        Raise ``ImageUnavailable`` if it cannot be had. Called before create
        and before upgrade, while the node is untouched.
        """

    @abc.abstractmethod
    async def create(self, spec: NodeSpec) -> None:
        """Create the node, stopped, with empty chain data.

        A node with this id that exists already is left as it is.
        """

    @abc.abstractmethod
    async def start(self, spec: NodeSpec) -> None:
        """Start the node's processes. A running node is left running."""

    @abc.abstractmethod
    async def stop(self, spec: NodeSpec) -> StopOutcome:
        """Stop the node's processes.

        Send ``spec.stop_signal``, wait up to ``spec.grace_period`` seconds,
        then kill. A stopped node is left stopped (a clean outcome).
        """

    @abc.abstractmethod
    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        """Make a stopped node run ``new.image``, keeping its chain data.

        Only called on a stopped node, after ``prepare(new)`` succeeded. A
        failure must leave the node able to run ``old`` (the agent then
        calls ``upgrade(new, old)`` to roll back).
        """

    async def snapshot(self, spec: NodeSpec, destination: Path) -> Path:
        """Copy a stopped node's chain data to a file under ``destination``.

        Only called when ``capabilities.snapshot`` is true, and only on a
        stopped node. Return the file, after checking that it exists.
        """
        raise NotImplementedError

    # A cancel scope cannot stop a call blocked in an SDK's worker thread, so
    # the runtime is told the limit and hands it to the engine itself.
    async def exec(
        self,
        spec: NodeSpec,
        argv: Sequence[str],
        timeout: float,  # noqa: ASYNC109
    ) -> ExecResult:
        """Run ``argv`` inside the running node and return what it printed.

        Only called when ``capabilities.exec`` is true. ``argv`` is passed as
        it is, never through a shell. Raise ``RuntimeFailure`` if the command
        cannot be started or does not end within ``timeout`` seconds; a
        command that ends with a non-zero exit code is a normal result.
        """
        raise NotImplementedError

    async def protocol_status(self, spec: NodeSpec) -> ProtocolStatus:
        """Ask the running node about its chain: height, sync, app status.

        Only called when ``capabilities.protocol`` is true, for a running
        node. Raise ``RuntimeFailure`` if the node cannot be asked; a method
        that fails leaves its field ``None``.
        """
        raise NotImplementedError

    async def protocol_command(
        self, spec: NodeSpec, command: str, params: Mapping[str, Value]
    ) -> str:
        """Run the generic command ``command`` that the node's spec declares.

        Only called when ``capabilities.protocol`` is true, for a running node,
        after the agent checked that ``spec.interface`` declares ``command``
        and that ``params`` fit its parameters. Return what the node answered,
        as text; raise ``RuntimeFailure`` if it failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    async def delete(self, node_id: str) -> None:
        """Remove the node and its chain data. A node that is gone is fine."""

    @abc.abstractmethod
    async def inspect(self, node_id: str) -> RuntimeNode | None:
        """Return the node as the runtime finds it, or ``None`` if absent."""

    @abc.abstractmethod
    async def list_nodes(self) -> list[RuntimeNode]:
        """Return every node this runtime owns on this host."""

    def changes(self) -> AsyncIterator[str] | None:
        """Ids of nodes whose state the engine says changed, as it happens.

        Optional. A runtime whose engine reports events (a VM that stopped,
        a container that died) returns an async iterator of node ids; the
        agent checks each such node at once instead of waiting for its next
        periodic pass. The default, ``None``, means no such feed.
        """
        return None

    async def aclose(self) -> None:
        """Release the runtime's connections. Called once, at agent exit."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} host={self.context.host_id}>"
