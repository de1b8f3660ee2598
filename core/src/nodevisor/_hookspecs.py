"""The hooks a nodevisor plugin implements.

Plugins are found only through the ``nodevisor`` entry-point group. Each entry
point names a module (or any object) whose functions carry ``@hookimpl`` and
are named after the hooks below; a plugin implements only the hooks it needs,
and may take only some of a hook's arguments.

There are two kinds of hook:

- ``nodevisor_runtimes`` hands the agent runtime *classes*. The node lifecycle
  is not a hook: the agent calls the methods of the one runtime a node runs
  on (``nodevisor.Runtime``), so a call for a node never reaches another
  plugin.
- Observer hooks (``nodevisor_node_status_changed``,
  ``nodevisor_command_finished``) tell every plugin what happened, after the
  fact. They may be plain functions or coroutine functions; the agent does
  not wait for them, and what they return is ignored. An observer that
  raises is logged and not called again; the agent carries on.

A function marked ``@hookimpl`` whose name is not one of these hooks (a
misspelling) makes the whole plugin fail to load, as a hook with an
argument its spec lacks does.
"""

from __future__ import annotations

import pluggy

from ._runtime import Runtime

__all__ = ["HOOKS", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("nodevisor")
hookimpl = pluggy.HookimplMarker("nodevisor")


@hookspec
def nodevisor_runtimes() -> list[type[Runtime]]:
    """Return the runtime classes this plugin provides.

    Called once, when the agent loads its plugins; a plain function, not a
    coroutine function. Each class must subclass ``nodevisor.Runtime``, set a
    ``name`` that no other runtime uses (1 to 32 lowercase letters, digits,
    ``-`` and ``_``, starting with a letter), a ``contract_version`` equal to
    ``nodevisor.CONTRACT_VERSION`` and ``capabilities`` that are a
    ``nodevisor.Capabilities``, and implement every abstract method, each
    contract method as an ``async def``. A class that does not fit is refused
    and reported; the plugin's other classes still load. The agent builds an
    instance only of the runtimes that config selects or that existing nodes
    use.
    """
    raise NotImplementedError


@hookspec
def nodevisor_node_status_changed(
    node_id: str,
    name: str,
    runtime: str,
    previous: str,
    current: str,
    failure: str | None,
) -> None:
    """A node's container status changed.

    Called after the change is stored and queued for the control plane, once
    for every transition, in order. ``previous`` and ``current`` are
    ``NodeInfo.ContainerStatus`` names such as ``"Stopped"`` and
    ``"Starting"``; ``failure`` is the node's failure reason, or ``None``.
    """


@hookspec
def nodevisor_command_finished(
    command_id: str,
    node_id: str | None,
    kind: str,
    exit_code: int,
    response: str,
) -> None:
    """A command from the control plane finished.

    Called after its result is stored and queued for the control plane.
    ``kind`` is ``"node.<command>"`` or ``"host.<command>"`` (for example
    ``"node.start"``); ``node_id`` is ``None`` for host commands;
    ``exit_code`` is one of ``nodevisor.ExitCode``.
    """


#: Every hook name, for the plugin guide's completeness test.
HOOKS = (
    "nodevisor_runtimes",
    "nodevisor_node_status_changed",
    "nodevisor_command_finished",
)
