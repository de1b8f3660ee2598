"""The hooks a nodevisor plugin implements.

Plugins are found only through the ``nodevisor`` entry-point group; each
entry point names a module (or object) whose functions carry ``@hookimpl``.
"""

from __future__ import annotations

import pluggy

from ._runtime import Runtime

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("nodevisor")
hookimpl = pluggy.HookimplMarker("nodevisor")


@hookspec
def nodevisor_runtimes() -> list[type[Runtime]]:
    """Return the runtime classes this plugin provides.

    Called once when the agent loads its plugins. Each class must subclass
    ``nodevisor.Runtime`` and set a ``name`` that no other runtime uses. The
    agent builds an instance only of the runtime(s) that config selects.
    """
    raise NotImplementedError
