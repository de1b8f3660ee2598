"""Finding plugins through entry points, choosing runtimes, calling observers."""

from __future__ import annotations

import asyncio
import difflib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import _hookspecs
from ._errors import ConfigError, PluginError
from ._runtime import CONTRACT_VERSION, Capabilities, Runtime, RuntimeContext

__all__ = ["ENTRY_POINT_GROUP", "PluginManager", "PluginStatus"]

log = logging.getLogger(__name__)

#: The entry-point group nodevisor loads plugins from.
ENTRY_POINT_GROUP = "nodevisor"

#: What a runtime's name may be. It names the runtime in config and its
#: folder under ``<data_dir>/runtimes``, so it must be one safe path part.
RUNTIME_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

#: The methods of the contract the agent awaits.
_COROUTINES = tuple(
    name for name, _ in inspect.getmembers(Runtime, inspect.iscoroutinefunction)
)

#: Raised in a plugin's code, these still stop the agent: the operator
#: pressed Ctrl-C, or the task that loads the plugins is being cancelled.
_PASS_THROUGH = (KeyboardInterrupt, asyncio.CancelledError)

Spawn = Callable[[Callable[[], Awaitable[Any]]], None]


@dataclass
class PluginStatus:
    """One plugin: what it provides, or why it is not in use."""

    name: str
    distribution: str
    runtimes: list[str] = field(default_factory=list)
    #: The observer hooks it implements.
    observes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    def explain(self, reason: str) -> str:
        """``reason``, prefixed with the plugin and its distribution."""
        return f"plugin {self.name!r} ({self.distribution}): {reason}"

    def __str__(self) -> str:
        return self.explain(self.error or "ok")


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
        #: Why each runtime name that was offered is not in ``runtimes``.
        self._refused: dict[str, list[str]] = {}

    @property
    def failures(self) -> list[PluginStatus]:
        return [p for p in self.plugins if p.errors]

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=self.group):
            status = PluginStatus(ep.name, _describe(ep))
            self.plugins.append(status)
            try:
                plugin = ep.load()
            except BaseException as exc:  # even sys.exit() must not stop the agent
                _pass_through(exc)
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
        """The runtime class named ``name``; ``PluginError`` says why not."""
        try:
            return self.runtimes[name]
        except KeyError:
            raise PluginError(self._why_absent(name)) from None

    def build(self, name: str, context: RuntimeContext) -> Runtime:
        """An instance of runtime ``name``; ``PluginError`` says why not.

        A ``ConfigError`` from the constructor (the runtime rejects its
        settings) passes through: that is the operator's to fix.
        """
        cls = self.runtime_class(name)
        try:
            return cls(context)
        except ConfigError:
            raise
        except Exception as exc:  # a bug of the plugin, told to its author
            reason = f"building runtime {name!r} raised {_name_error(exc)}"
            raise PluginError(self._claims[name].explain(reason)) from exc

    def _why_absent(self, name: str) -> str:
        if name in self._refused:
            return "; ".join(self._refused[name])
        # A plugin that fails to import cannot say which runtimes it has,
        # but a plugin is usually named after the runtime it provides.
        failed = [str(p) for p in self.failures if p.name == name]
        if failed:
            return "; ".join(failed)
        known = ", ".join(sorted(self.runtimes)) or "none"
        return f"no runtime named {name!r} is installed (installed: {known})"

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
        hooks = [caller.name for caller in self._pm.get_hookcallers(plugin) or []]
        unknown = self._unknown_hooks(plugin, hooks)
        if unknown:
            # Refused whole, as a hook with a wrong argument is: a plugin
            # that runs without the hook its author meant would mislead.
            self._pm.unregister(plugin)
            self._fail(status, unknown)
            return
        status.observes = [hook for hook in hooks if hook != "nodevisor_runtimes"]
        self._collect(status, plugin)

    def _unknown_hooks(self, plugin: object, hooks: list[str]) -> str | None:
        """Say which of ``hooks`` no spec has, as pluggy's check_pending would."""
        unknown = [
            hook
            for hook in hooks
            if not getattr(self._pm.hook, hook).has_spec()
            and not self._optional(plugin, hook)
        ]
        if not unknown:
            return None
        return "; ".join(map(_unknown_hook, unknown))

    def _optional(self, plugin: object, hook: str) -> bool:
        impls = getattr(self._pm.hook, hook).get_hookimpls()
        return all(impl.optionalhook for impl in impls if impl.plugin is plugin)

    def _collect(self, status: PluginStatus, plugin: object) -> None:
        impl = getattr(plugin, "nodevisor_runtimes", None)
        if impl is None:
            return
        try:
            provided = _runtimes_from(impl)
        except PluginError as exc:
            self._fail(status, str(exc))
            return
        for cls in provided:
            problem = _misfit(cls)
            if problem is not None:
                self._refuse(status, getattr(cls, "name", None), problem)
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
        self._refused.setdefault(name, []).append(reason)
        self._fail(status, reason)

    def _refuse(self, status: PluginStatus, name: object, reason: str) -> None:
        """Fail ``status``, and remember why for the runtime ``name``."""
        if isinstance(name, str) and name:
            self._refused.setdefault(name, []).append(status.explain(reason))
        self._fail(status, reason)

    def _fail(self, status: PluginStatus, reason: str) -> None:
        status.errors.append(reason)
        log.error(
            "plugin %r (%s): %s; continuing without it",
            status.name,
            status.distribution,
            reason,
        )


def _pass_through(exc: BaseException) -> None:
    """Raise ``exc`` again if it must stop the agent although a plugin raised it."""
    if isinstance(exc, _PASS_THROUGH):
        raise exc
    if isinstance(exc, BaseExceptionGroup) and exc.subgroup(_PASS_THROUGH):
        raise exc


def _runtimes_from(impl: Callable[[], object]) -> list[object]:
    """What a ``nodevisor_runtimes`` hook returns, as a list.

    Raises ``PluginError`` saying what is wrong with the hook.
    """
    try:
        result = impl()
    except BaseException as exc:  # as at import: a plugin must not stop the agent
        _pass_through(exc)
        raise PluginError(f"nodevisor_runtimes() raised {exc!r}") from exc
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited, on purpose: no warning for it
        raise PluginError(
            "nodevisor_runtimes must be a plain function (def, not async def) "
            "that returns a list of runtime classes"
        )
    if result is None:
        return []
    if isinstance(result, str) or not isinstance(result, Iterable):
        raise PluginError(
            f"nodevisor_runtimes() returned {result!r}; it must return a list "
            "of runtime classes"
        )
    return list(result)


def _unknown_hook(hook: str) -> str:
    close = difflib.get_close_matches(hook, _hookspecs.HOOKS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(_hookspecs.HOOKS)
    return f"unknown hook {hook!r}{hint}; the hooks are {known}"


def _misfit(cls: object) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        return f"{cls!r} is not a subclass of nodevisor.Runtime"
    checks = (_bad_name, _bad_contract, _bad_capabilities, _unimplemented, _not_async)
    for check in checks:
        problem = check(cls)
        if problem is not None:
            return problem
    return None


def _bad_name(cls: type[Runtime]) -> str | None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"runtime {cls.__qualname__} does not set a name"
    if not RUNTIME_NAME.fullmatch(name):
        return (
            f"runtime {cls.__qualname__} is named {name!r}; a runtime name is "
            "1 to 32 lowercase letters, digits, '-' and '_', starting with "
            "a letter"
        )
    return None


def _bad_contract(cls: type[Runtime]) -> str | None:
    if cls.contract_version == CONTRACT_VERSION:
        return None
    return (
        f"runtime {cls.name!r} was built for contract version "
        f"{cls.contract_version}, but this nodevisor expects version "
        f"{CONTRACT_VERSION}"
    )


def _bad_capabilities(cls: type[Runtime]) -> str | None:
    if isinstance(cls.capabilities, Capabilities):
        return None
    return (
        f"runtime {cls.name!r} sets capabilities = {cls.capabilities!r}; it "
        "must be a nodevisor.Capabilities(...)"
    )


def _unimplemented(cls: type[Runtime]) -> str | None:
    if not getattr(cls, "__abstractmethods__", None):
        return None
    missing = ", ".join(sorted(cls.__abstractmethods__))
    return f"runtime {cls.name!r} does not implement {missing}"


def _not_async(cls: type[Runtime]) -> str | None:
    plain = [
        name
        for name in _COROUTINES
        if not inspect.iscoroutinefunction(getattr(cls, name))
    ]
    if not plain:
        return None
    return (
        f"runtime {cls.name!r} defines {', '.join(plain)} without async; "
        "the agent awaits every contract method, so each must be an `async def`"
    )


def _name_error(exc: BaseException) -> str:
    """``KeyError: 'missing'``: the exception's type, then what it says."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return ep.value
    return f"{dist.metadata['Name']} {dist.version}"
