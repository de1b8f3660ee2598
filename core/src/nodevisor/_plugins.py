"""Finding plugins through entry points, choosing runtimes, calling observers."""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import _hookspecs
from ._errors import PluginError
from ._runtime import CONTRACT_VERSION, Runtime

__all__ = ["ENTRY_POINT_GROUP", "PluginManager", "PluginStatus"]

log = logging.getLogger(__name__)

#: The entry-point group nodevisor loads plugins from.
ENTRY_POINT_GROUP = "nodevisor"

Spawn = Callable[[Callable[[], Awaitable[Any]]], None]


@dataclass
class PluginStatus:
    """One plugin: what it provides, or why it is not in use."""

    name: str
    distribution: str
    runtimes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.distribution}): {self.error or 'ok'}"


@dataclass
class PluginManager:
    """Loads plugins and keeps the runtimes they provide, by name.

    A plugin that fails to import, whose hooks do not match the specs, or
    whose runtime does not fit the contract is logged and recorded in
    ``plugins`` with the reason; the others load as usual.
    """

    group: str = ENTRY_POINT_GROUP
    runtimes: dict[str, type[Runtime]] = field(default_factory=dict)
    plugins: list[PluginStatus] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pm = pluggy.PluginManager("nodevisor")
        self._pm.add_hookspecs(_hookspecs)
        self._silenced: set[tuple[str, str]] = set()
        self._claims: dict[str, PluginStatus] = {}

    @property
    def failures(self) -> list[PluginStatus]:
        return [p for p in self.plugins if p.errors]

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=self.group):
            status = PluginStatus(ep.name, _describe(ep))
            self.plugins.append(status)
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not stop the agent
                self._fail(status, f"failed to import {ep.value!r}: {exc!r}")
                continue
            self._register(status, plugin)

    def register(self, plugin: object, name: str) -> PluginStatus:
        """Register a plugin object directly (tests, embedding)."""
        status = PluginStatus(name, "registered directly")
        self.plugins.append(status)
        self._register(status, plugin)
        return status

    def runtime_class(self, name: str) -> type[Runtime]:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise PluginError(
                f"no runtime named {name!r} is installed (installed: {known})"
            ) from None

    def notify(self, spawn: Spawn, hook: str, **kwargs: Any) -> None:
        """Call every implementation of observer ``hook``, isolating failures.

        Coroutines are handed to ``spawn`` to run in the background.
        """
        for impl in getattr(self._pm.hook, hook).get_hookimpls():
            key = (impl.plugin_name, hook)
            if key in self._silenced:
                continue
            arguments = {name: kwargs[name] for name in impl.argnames}
            try:
                result = impl.function(**arguments)
            except Exception:
                self._silence(key)
                continue
            if inspect.isawaitable(result):
                spawn(lambda result=result, key=key: self._guard(key, result))

    async def _guard(self, key: tuple[str, str], result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            self._silence(key)

    def _silence(self, key: tuple[str, str]) -> None:
        log.exception("plugin %r raised in %s; it will not be called again", *key)
        self._silenced.add(key)

    def _register(self, status: PluginStatus, plugin: object) -> None:
        try:
            self._pm.register(plugin, name=status.name)
        except Exception as exc:  # pluggy names the hook that does not fit
            self._fail(status, f"does not fit the hook specs: {exc}")
            return
        self._collect(status, plugin)

    def _collect(self, status: PluginStatus, plugin: object) -> None:
        impl = getattr(plugin, "nodevisor_runtimes", None)
        if impl is None:
            return
        try:
            provided = list(impl() or [])
        except Exception as exc:
            self._fail(status, f"nodevisor_runtimes() raised {exc!r}")
            return
        for cls in provided:
            problem = _misfit(cls)
            if problem is not None:
                self._fail(status, problem)
            elif cls.name in self._claims:
                self._contest(cls.name, status)
            else:
                self._claims[cls.name] = status
                self.runtimes[cls.name] = cls
                status.runtimes.append(cls.name)
                log.debug("runtime %r loaded from %s", cls.name, status)

    def _contest(self, name: str, status: PluginStatus) -> None:
        # Two plugins claim one name: neither is used, so an impostor cannot
        # take over a runtime by being found first.
        first = self._claims[name]
        reason = (
            f"runtime name {name!r} is provided by both {first.name!r} "
            f"({first.distribution}) and {status.name!r} ({status.distribution}); "
            "neither is used: uninstall one"
        )
        if self.runtimes.pop(name, None) is not None:
            first.runtimes.remove(name)
            self._fail(first, reason)
        self._fail(status, reason)

    def _fail(self, status: PluginStatus, reason: str) -> None:
        status.errors.append(reason)
        log.error(
            "plugin %r (%s): %s; continuing without it",
            status.name,
            status.distribution,
            reason,
        )


def _misfit(cls: object) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        return f"{cls!r} is not a subclass of nodevisor.Runtime"
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        return f"runtime {cls.__qualname__} does not set a name"
    if cls.contract_version != CONTRACT_VERSION:
        return (
            f"runtime {cls.name!r} was built for contract version "
            f"{cls.contract_version}, but this nodevisor expects version "
            f"{CONTRACT_VERSION}"
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
