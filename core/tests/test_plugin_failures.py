"""Broken outside plugins leave the agent running, and everyone can see them.

Each case installs one broken plugin as a real distribution on ``sys.path``
(a dist-info folder with entry points), then checks the three places an
operator looks: the agent still serves commands with the memory runtime,
``nodevisor agent plugins`` names the failure and exits with 1, and the
control plane has the failure in the host's ``HostInfo.plugins``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor import CONTRACT_VERSION, ExitCode, hookimpl
from nodevisor._agent import Agent
from nodevisor._config import AgentConfig
from nodevisor._plugins import PluginManager
from nodevisor._provision import provision
from nodevisor.cli import main
from nodevisor.controlplane.testing import running_control_plane

pytestmark = pytest.mark.anyio


@dataclasses.dataclass(frozen=True)
class Broken:
    """One broken plugin: its module's source and what the reports must say.

    A few tests install a plugin that works the same way, with no reasons.
    """

    plugin: str
    source: str
    reasons: tuple[str, ...]

    @property
    def module(self) -> str:
        return f"outside_{self.plugin}"

    @property
    def distribution(self) -> str:
        return f"nodevisor-outside-{self.plugin}"


def offering(name: str, body: str = "", hook: str = "def") -> str:
    """The source of a plugin whose ``hook`` offers one runtime, ``name``.

    The runtime is a ``MemoryRuntime`` with ``body`` (class-level lines)
    added; ``hook`` is ``"async def"`` for a hook of the wrong kind.
    """
    lines = "".join(f"\n    {line}" for line in textwrap.dedent(body).splitlines())
    return (
        "import nodevisor\n"
        "from nodevisor.testing import MemoryRuntime\n\n"
        f"class Offered(MemoryRuntime):\n    name = {name!r}{lines}\n\n"
        f"@nodevisor.hookimpl\n{hook} nodevisor_runtimes():\n    return [Offered]\n"
    )


FUTURE = f"contract_version = {CONTRACT_VERSION + 1}"

BROKEN = [
    Broken(
        "raises",
        "raise RuntimeError('the vendor SDK is not installed')\n",
        ("failed to import", "the vendor SDK is not installed"),
    ),
    Broken(
        "future",
        offering("future", FUTURE),
        (
            f"contract version {CONTRACT_VERSION + 1}",
            f"expects version {CONTRACT_VERSION}",
        ),
    ),
    Broken(
        "colour",
        textwrap.dedent("""
            import nodevisor

            @nodevisor.hookimpl
            def nodevisor_node_status_changed(node_id, colour):
                pass
        """),
        ("does not fit the hook specs", "nodevisor_node_status_changed", "colour"),
    ),
    Broken(
        "exits",
        "import sys\nsys.exit(3)\n",
        ("failed to import 'outside_exits'", "SystemExit(3)"),
    ),
    Broken(
        "plain",
        offering(
            "plain",
            """
            def create(self, spec):
                return None

            def list_nodes(self):
                return []
            """,
        ),
        (
            "runtime 'plain' defines create, list_nodes without async",
            "must be an `async def`",
        ),
    ),
    Broken(
        "dictcaps",
        offering("dictcaps", 'capabilities = {"snapshot": True}'),
        (
            "runtime 'dictcaps' sets capabilities = {'snapshot': True}",
            "must be a nodevisor.Capabilities",
        ),
    ),
    Broken(
        "misspelled",
        textwrap.dedent("""
            import nodevisor

            @nodevisor.hookimpl
            def nodevisor_node_status_change(node_id):
                pass
        """),
        (
            "unknown hook 'nodevisor_node_status_change'",
            "did you mean 'nodevisor_node_status_changed'?",
        ),
    ),
    Broken(
        "asynchook",
        offering("other", hook="async def"),
        ("nodevisor_runtimes must be a plain function (def, not async def)",),
    ),
    Broken(
        "escape",
        offering("../../escape"),
        ("runtime Offered is named '../../escape'", "lowercase letters"),
    ),
]


def install_distribution(
    root: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]
) -> None:
    """Write ``modules`` and a ``name`` 0.3 dist-info with nodevisor entry points."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n"
    )
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[nodevisor]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install a ``Broken`` plugin; forget its module afterwards."""
    modules: list[str] = []

    def install(broken: Broken) -> None:
        root = tmp_path / "site"
        root.mkdir()
        install_distribution(
            root,
            broken.distribution,
            {broken.module: broken.source},
            {broken.plugin: broken.module},
        )
        monkeypatch.syspath_prepend(str(root))
        modules.append(broken.module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture
async def control_plane(tmp_path):
    async with running_control_plane(tmp_path / "cp") as cp:
        yield cp


@pytest.fixture
async def config(tmp_path, catalogue_dir, control_plane):
    config = AgentConfig(
        data_dir=tmp_path / "agent", runtime="memory", catalogue=[catalogue_dir]
    )
    otp = await control_plane.admin.create_otp()
    await provision(config, otp, control_plane.address)
    return config


@contextlib.asynccontextmanager
async def running_agent(config, plugins=None):
    agent = Agent(config, plugins)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        with anyio.fail_after(10):
            await agent.started.wait()
            await agent.stream.connected.wait()
        yield agent
        tasks.cancel_scope.cancel()


def node_command(node_id, **variant):
    return command_flow_pb2.Command(
        node=node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    )


def create(node_id, url="testchain/1"):
    image = common_pb2.ContainerImage(url=url)
    return node_command(node_id, create=node_pb2.NodeCreate(name="n1", image=image))


async def exit_code(cp, host_id, command):
    return (await result(cp, host_id, command)).exit_code


async def result(cp, host_id, command):
    """The command's final ``CommandInfo``: its exit code and response."""
    async for update in cp.admin.send_command(host_id, command, 10):
        if update.command_info.HasField("exit_code"):
            return update.command_info
    raise AssertionError(f"no result for {command}")


async def reported_plugins(cp, name):
    """The plugin ``name`` as the host's last HostInfo reports it."""
    with anyio.fail_after(5):
        while True:
            [host] = await cp.admin.list_hosts()
            found = [p for p in host.info.plugins if p.name == name]
            if found:
                return found[0]
            await anyio.sleep(0.05)


def run_hosts_cli(cp):
    env = {
        "COLUMNS": "240",
        "NODEVISOR_CP_URL": cp.address,
        "NODEVISOR_CP_DATA_DIR": str(cp.data_dir),
    }
    return CliRunner().invoke(main, ["control-plane", "hosts"], env=env)


def run_plugins_cli():
    return CliRunner().invoke(main, ["agent", "plugins"], env={"COLUMNS": "240"})


@pytest.mark.parametrize("broken", BROKEN, ids=lambda b: b.plugin)
async def test_a_broken_plugin_is_reported_and_the_agent_serves(
    broken, installed, control_plane, config
):
    installed(broken)
    host_id = (await control_plane.admin.list_hosts())[0].id
    node_id = str(uuid.uuid4())

    async with running_agent(config):
        assert await exit_code(control_plane, host_id, create(node_id)) == 0
        start = node_command(node_id, start=node_pb2.NodeStart())
        assert await exit_code(control_plane, host_id, start) == 0
        reported = await reported_plugins(control_plane, broken.plugin)

    assert reported.distribution == f"{broken.distribution} 0.3"
    assert reported.HasField("error")
    for reason in broken.reasons:
        assert reason in reported.error
    memory = await reported_plugins(control_plane, "memory")
    assert list(memory.runtimes) == ["memory"] and not memory.HasField("error")
    hosts = await anyio.to_thread.run_sync(run_hosts_cli, control_plane)
    assert hosts.exit_code == 0, hosts.output
    assert "plugin failures" in hosts.output and broken.plugin in hosts.output
    shown = " ".join(hosts.output.split())
    assert f"({host_id}): plugin {broken.plugin!r} ({broken.distribution}" in shown
    for reason in broken.reasons:
        assert reason in shown


@pytest.mark.parametrize("broken", BROKEN, ids=lambda b: b.plugin)
def test_agent_plugins_names_a_broken_plugin_and_exits_1(broken, installed):
    installed(broken)
    result = run_plugins_cli()
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    failed = f"failed: plugin {broken.plugin!r} ({broken.distribution} 0.3)"
    assert failed in output
    for reason in broken.reasons:
        assert reason in output
    assert "memory" in output


QUIET = [
    (
        Broken(
            "watcher",
            "import nodevisor\n\n"
            "@nodevisor.hookimpl\n"
            "def nodevisor_node_status_changed(node_id):\n"
            "    pass\n",
            (),
        ),
        "observer: plugin 'watcher' (nodevisor-outside-watcher 0.3): ok "
        "(nodevisor_node_status_changed)",
    ),
    (
        Broken(
            "unmarked",
            "def nodevisor_node_status_changed(node_id):\n    pass\n",
            (),
        ),
        "unused: plugin 'unmarked' (nodevisor-outside-unmarked 0.3): ok, but it "
        "provides no runtime and implements no hook",
    ),
]


@pytest.mark.parametrize(("plugin", "line"), QUIET, ids=["observer", "unused"])
def test_agent_plugins_lists_a_plugin_that_provides_no_runtime(plugin, line, installed):
    installed(plugin)
    result = run_plugins_cli()
    assert result.exit_code == 0, result.output
    assert line in " ".join(result.output.split())


def test_ctrl_c_during_a_plugins_import_still_stops_the_loading(installed):
    installed(Broken("interrupted", "raise KeyboardInterrupt\n", ()))
    with pytest.raises(KeyboardInterrupt):
        PluginManager().load_entry_points()


def test_agent_plugins_exits_0_when_every_plugin_loads():
    result = run_plugins_cli()
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output and "memory" in result.output


UNUSABLE = [
    (
        Broken(
            "badcontract",
            offering("future", FUTURE),
            (
                f"runtime 'future' was built for contract version "
                f"{CONTRACT_VERSION + 1}, but this nodevisor expects version "
                f"{CONTRACT_VERSION}",
            ),
        ),
        "future",
    ),
    (
        Broken(
            "buggy",
            offering(
                "ctorbug",
                """
                def __init__(self, context):
                    super().__init__(context)
                    context.settings["missing"]
                """,
            ),
            ("building runtime 'ctorbug' raised KeyError: 'missing'",),
        ),
        "ctorbug",
    ),
]


@pytest.mark.parametrize(("broken", "runtime"), UNUSABLE, ids=["contract", "ctor"])
async def test_a_command_on_an_unusable_runtime_names_its_plugin_and_the_cause(
    broken, runtime, installed, control_plane, config
):
    """The plugin's name differs from the runtime's: the reason is still
    found, with the plugin, its distribution and the cause."""
    installed(broken)
    host_id = (await control_plane.admin.list_hosts())[0].id
    (config.catalogue[0] / "spare.toml").write_text(
        f'protocol = "spare"\n[versions."1".runtimes.{runtime}]\nimage = "spare"\n'
    )
    chosen = config.model_copy(update={"runtime": runtime})

    async with running_agent(chosen):
        answer = await result(
            control_plane, host_id, create(str(uuid.uuid4()), "spare/1")
        )

    assert answer.exit_code == ExitCode.SERVICE_NOT_READY
    said = f"runtime {runtime!r} is not available: plugin {broken.plugin!r} "
    assert answer.response.startswith(f"{said}({broken.distribution} 0.3): ")
    for reason in broken.reasons:
        assert reason in answer.response


class Recorder:
    """An observer that writes down every call."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.commands: list[tuple[str, int]] = []
        self.two_commands = anyio.Event()

    @hookimpl
    def nodevisor_node_status_changed(self, node_id: str, current: str) -> None:
        self.statuses.append(current)

    @hookimpl
    async def nodevisor_command_finished(self, kind: str, exit_code: int) -> None:
        self.commands.append((kind, exit_code))
        if len(self.commands) == 2:
            self.two_commands.set()


class Raising:
    """An observer whose hooks raise, counting how often they are called."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def nodevisor_node_status_changed(self, node_id: str) -> None:
        self.calls += 1
        raise ValueError(f"observer broke on node {node_id}")

    @hookimpl
    async def nodevisor_command_finished(self, command_id: str) -> None:
        self.calls += 1
        raise ValueError(f"observer broke on command {command_id}")


def observers() -> tuple[PluginManager, Recorder, Raising]:
    plugins = PluginManager()
    plugins.load_entry_points()
    raising, recorder = Raising(), Recorder()
    plugins.register(raising, name="raising")
    plugins.register(recorder, name="recorder")
    return plugins, recorder, raising


async def test_an_observer_that_raises_is_silenced_and_the_others_go_on(
    control_plane, config, caplog
):
    plugins, recorder, raising = observers()
    host_id = (await control_plane.admin.list_hosts())[0].id
    node_id = str(uuid.uuid4())
    caplog.set_level(logging.ERROR, logger="nodevisor._plugins")

    async with running_agent(config, plugins):
        assert await exit_code(control_plane, host_id, create(node_id)) == 0
        start = node_command(node_id, start=node_pb2.NodeStart())
        assert await exit_code(control_plane, host_id, start) == 0
        with anyio.fail_after(5):
            await recorder.two_commands.wait()

    assert recorder.statuses == [
        "Installing",
        "Creating",
        "Stopped",
        "Starting",
        "Running",
    ]
    assert recorder.commands == [("node.create", 0), ("node.start", 0)]
    assert raising.calls == 2  # once per hook, then never again
    assert "'raising' raised in nodevisor_node_status_changed" in caplog.text
    assert "'raising' raised in nodevisor_command_finished" in caplog.text
