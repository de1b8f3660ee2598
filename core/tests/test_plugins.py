"""Plugin discovery: a broken plugin is reported and the others still load."""

import gc
import stat
import sys
import textwrap
import warnings

import pytest

from nodevisor import CONTRACT_VERSION, PluginError, hookimpl
from nodevisor._agent import load_runtimes
from nodevisor._config import AgentConfig
from nodevisor._plugins import PluginManager


@pytest.fixture
def outside_plugins(tmp_path, monkeypatch):
    """Install three broken plugins as a distribution on sys.path."""
    (tmp_path / "broken_import.py").write_text("raise ImportError('no such SDK')\n")
    (tmp_path / "old_contract.py").write_text(
        textwrap.dedent(f"""
        import nodevisor
        from nodevisor.testing import MemoryRuntime

        class Old(MemoryRuntime):
            name = "old"
            contract_version = {CONTRACT_VERSION + 1}

        @nodevisor.hookimpl
        def nodevisor_runtimes():
            return [Old]
    """)
    )
    (tmp_path / "half_done.py").write_text(
        textwrap.dedent("""
        import nodevisor

        class Half(nodevisor.Runtime):
            name = "half"

        @nodevisor.hookimpl
        def nodevisor_runtimes():
            return [Half]
    """)
    )
    info = tmp_path / "outside_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: outside-plugins\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[nodevisor]\nbroken = broken_import\nold = old_contract\nhalf = half_done\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in ("broken_import", "old_contract", "half_done"):
        sys.modules.pop(module, None)


def test_broken_plugins_are_reported_and_the_rest_load(outside_plugins):
    plugins = PluginManager()
    plugins.load_entry_points()
    assert "memory" in plugins.runtimes
    reasons = {f.name: f.error for f in plugins.failures}
    assert "no such SDK" in reasons["broken"]
    assert f"contract version {CONTRACT_VERSION + 1}" in reasons["old"]
    assert f"expects version {CONTRACT_VERSION}" in reasons["old"]
    assert "does not implement" in reasons["half"] and "create" in reasons["half"]
    assert all(f.distribution == "outside-plugins 1.0" for f in plugins.failures)


def test_an_unknown_runtime_name_lists_the_installed_ones():
    plugins = PluginManager()
    plugins.load_entry_points()
    with pytest.raises(PluginError, match=r"no runtime named 'nope'.*memory"):
        plugins.runtime_class("nope")


def test_two_plugins_claiming_one_runtime_name_lose_it_both():
    from nodevisor.testing import _memory

    plugins = PluginManager(group="nodevisor-none")
    plugins.register(_memory, name="first")

    class Impostor:
        @staticmethod
        def nodevisor_runtimes():
            return [_memory.MemoryRuntime]

    plugins.register(Impostor(), name="impostor")
    assert "memory" not in plugins.runtimes
    reasons = {f.name: f.error for f in plugins.failures}
    assert set(reasons) == {"first", "impostor"}
    assert "provided by both 'first'" in reasons["impostor"]
    assert "neither is used" in reasons["first"]


def runtime_named(name):
    from nodevisor.testing import MemoryRuntime

    return type("Named", (MemoryRuntime,), {"name": name})


def offering(*classes):
    class Plugin:
        @hookimpl
        def nodevisor_runtimes(self):
            return list(classes)

    return Plugin()


@pytest.mark.parametrize(
    "name", ["Docker", "1st", "a/b", "../../escape", "has space", "x" * 33, "é"]
)
def test_a_runtime_name_that_is_no_short_identifier_is_refused(name):
    plugins = PluginManager(group="nodevisor-none")
    status = plugins.register(offering(runtime_named(name)), name="odd")
    assert name not in plugins.runtimes
    assert f"is named {name!r}; a runtime name is 1 to 32 lowercase" in status.error


def test_a_runtime_name_of_letters_digits_dashes_and_underscores_loads():
    plugins = PluginManager(group="nodevisor-none")
    name = "my-engine_2" + "x" * 21  # 32 characters
    plugins.register(offering(runtime_named(name)), name="fine")
    assert name in plugins.runtimes and not plugins.failures


def test_a_refused_runtime_is_asked_for_with_its_plugins_reason():
    plugins = PluginManager(group="nodevisor-none")
    plugins.register(offering(runtime_named("Loud")), name="shouting")
    with pytest.raises(PluginError, match=r"^plugin 'shouting' \(registered .*"):
        plugins.runtime_class("Loud")


def test_an_async_runtimes_hook_is_refused_without_a_warning():
    class Eager:
        @hookimpl
        async def nodevisor_runtimes(self):
            return [runtime_named("eager")]

    plugins = PluginManager(group="nodevisor-none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = plugins.register(Eager(), name="eager")
        gc.collect()  # a coroutine left unawaited warns when it is collected
    assert "must be a plain function (def, not async def)" in status.error
    assert "eager" not in plugins.runtimes
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_runtimes_hook_that_returns_one_class_is_told_to_return_a_list():
    class Single:
        @hookimpl
        def nodevisor_runtimes(self):
            return runtime_named("single")

    plugins = PluginManager(group="nodevisor-none")
    status = plugins.register(Single(), name="single")
    assert "nodevisor_runtimes() returned <class" in status.error
    assert "it must return a list of runtime classes" in status.error


def test_a_misspelled_hook_refuses_the_whole_plugin_and_suggests_the_name():
    class Typo:
        @hookimpl
        def nodevisor_runtime(self):
            return [runtime_named("typo")]

        @hookimpl
        def nodevisor_command_finished(self, kind):
            raise AssertionError("a refused plugin is never called")

    plugins = PluginManager(group="nodevisor-none")
    status = plugins.register(Typo(), name="typo")
    assert status.error.startswith(
        "unknown hook 'nodevisor_runtime' (did you mean 'nodevisor_runtimes'?); "
        "the hooks are nodevisor_runtimes, nodevisor_node_status_changed"
    )
    plugins.notify(lambda _: None, "nodevisor_command_finished", kind="node.start")


def test_an_optional_hook_of_another_version_is_no_failure():
    class Forward:
        @hookimpl(optionalhook=True)
        def nodevisor_node_renamed(self, node_id):
            pass

    plugins = PluginManager(group="nodevisor-none")
    status = plugins.register(Forward(), name="forward")
    assert not status.errors


def test_an_observer_says_which_hooks_it_implements():
    class Watcher:
        @hookimpl
        def nodevisor_node_status_changed(self, node_id):
            pass

    plugins = PluginManager(group="nodevisor-none")
    status = plugins.register(Watcher(), name="watcher")
    assert status.observes == ["nodevisor_node_status_changed"]
    assert not status.runtimes and not status.errors


@pytest.mark.anyio
async def test_a_runtime_finds_its_data_directory_made_private(tmp_path):
    seen = {}

    class Probe(runtime_named("probe")):
        def __init__(self, context):
            super().__init__(context)
            seen["mode"] = stat.S_IMODE(context.data_dir.stat().st_mode)
            seen["path"] = context.data_dir

    plugins = PluginManager(group="nodevisor-none")
    plugins.register(offering(Probe), name="probe")
    config = AgentConfig(data_dir=tmp_path / "agent", runtime="probe")
    runtimes, unavailable = await load_runtimes(config, "host", plugins, {"probe"})
    assert list(runtimes) == ["probe"] and not unavailable
    assert seen == {"mode": 0o700, "path": tmp_path / "agent" / "runtimes" / "probe"}
