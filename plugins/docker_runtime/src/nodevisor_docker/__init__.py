"""nodevisor-docker: the runtime that runs each node as a Docker container.

The agent finds it through the ``nodevisor`` entry-point group, like any
outside plugin. Select it with ``runtime = "docker"`` in the agent's config;
the ``[runtimes.docker]`` table sets ``base_url``, ``timeout``,
``max_threads`` and ``pull`` (see ``DockerRuntime``).
"""

from __future__ import annotations

import nodevisor

from ._runtime import DockerRuntime

__all__ = ["DockerRuntime", "nodevisor_runtimes"]


@nodevisor.hookimpl
def nodevisor_runtimes() -> list[type[nodevisor.Runtime]]:
    """The runtimes this plugin provides."""
    return [DockerRuntime]
