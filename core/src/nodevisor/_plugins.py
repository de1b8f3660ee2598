"""Finding plugins through entry points and choosing runtimes from them."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field

import pluggy

from . import _hookspecs
from ._errors import PluginError
from ._runtime import CONTRACT_VERSION, Runtime

__all__ = ["ENTRY_POINT_GROUP", "PluginFailure", "PluginManager"]

log = logging.getLogger(__name__)

#: The entry-point group nodevisor loads plugins from.
ENTRY_POINT_GROUP = "nodevisor"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was not loaded, and why."""

    plugin: str
    distribution: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}): {self.reason}"


@dataclass
class PluginManager:
    """Loads plugins and keeps the runtimes they provide, by name.

    A plugin that fails to import, or that provides a runtime which does not
    fit the contract, is logged and recorded in ``failures``; the others load
    as usual.
    """

    group: str = ENTRY_POINT_GROUP
    runtimes: dict[str, type[Runtime]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pm = pluggy.PluginManager("nodevisor")
        self._pm.add_hookspecs(_hookspecs)

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = _describe(ep)
            try:
                plugin = ep.load()
                self._pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not stop the agent
                self._fail(ep.name, dist, f"failed to load: {exc!r}")
                continue
            self._collect(ep.name, dist, plugin)

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object directly (tests, embedding)."""
        self._pm.register(plugin, name=name)
        self._collect(name, "registered directly", plugin)

    def runtime_class(self, name: str) -> type[Runtime]:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise PluginError(
                f"no runtime named {name!r} is installed (installed: {known})"
            ) from None

    def _collect(self, plugin_name: str, dist: str, plugin: object) -> None:
        impl = getattr(plugin, "nodevisor_runtimes", None)
        if impl is None:
            return
        try:
            provided = list(impl() or [])
        except Exception as exc:
            self._fail(plugin_name, dist, f"nodevisor_runtimes() raised {exc!r}")
            return
        for cls in provided:
            problem = _misfit(cls)
            if problem is None and cls.name in self.runtimes:
                problem = f"runtime name {cls.name!r} is already taken"
            if problem is not None:
                self._fail(plugin_name, dist, problem)
                continue
            self.runtimes[cls.name] = cls
            log.debug(
                "runtime %r loaded from plugin %r (%s)", cls.name, plugin_name, dist
            )

    def _fail(self, plugin: str, dist: str, reason: str) -> None:
        failure = PluginFailure(plugin, dist, reason)
        self.failures.append(failure)
        log.error("%s; continuing without it", failure)


def _misfit(cls: object) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        return f"{cls!r} is not a subclass of nodevisor.Runtime"
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        return f"runtime {cls.__qualname__} does not set a name"
    if cls.contract_version != CONTRACT_VERSION:
        return (
            f"runtime {cls.name!r} was built for contract version "
            f"{cls.contract_version}, this nodevisor speaks {CONTRACT_VERSION}"
        )
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"runtime {cls.name!r} does not implement {missing}"
    return None


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return ep.value
    return f"{dist.metadata['Name']} {dist.version}"
