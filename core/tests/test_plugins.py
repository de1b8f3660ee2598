"""Plugin discovery: a broken plugin is reported and the others still load."""

import sys
import textwrap

import pytest

from nodevisor import CONTRACT_VERSION, PluginError
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
