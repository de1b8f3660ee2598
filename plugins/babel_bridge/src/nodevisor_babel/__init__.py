"""nodevisor-babel: babel, the agent beside each node, and the host's bridge to it.

- ``python -m nodevisor_babel`` is babel: it supervises one node's processes
  from its spec and answers its protocol's methods over gRPC on a Unix
  socket (``nodevisor_babel.v1``, generated from ``proto/nodevisor_babel``).
- ``BabelBridge`` gives a runtime ``protocol_status`` and
  ``protocol_command`` through a node's babel.
- ``BabelRuntime`` (``runtime = "babel"``) runs nodes as babel-supervised
  processes on the host, with no container engine.
"""

from __future__ import annotations

import nodevisor

from ._bridge import BabelBridge
from ._runtime import BabelRuntime
from ._spec import BabelSpec

__all__ = ["BabelBridge", "BabelRuntime", "BabelSpec", "nodevisor_runtimes"]


@nodevisor.hookimpl
def nodevisor_runtimes() -> list[type[nodevisor.Runtime]]:
    return [BabelRuntime]
