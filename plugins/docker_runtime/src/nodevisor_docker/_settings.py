"""The ``[runtimes.docker]`` table of the agent's config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodevisor import ConfigError

__all__ = ["DockerSettings"]

_DEFAULT_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class DockerSettings:
    """How the runtime reaches and uses the engine."""

    #: The engine's address; empty means ``DOCKER_HOST`` or the local socket.
    base_url: str = ""
    #: Seconds an engine request may take; a stop adds its grace period.
    timeout: float = 60.0
    #: How many docker-py calls may run at once, each in a worker thread.
    max_threads: int = 8
    #: Whether ``prepare`` pulls an image that is not on the host.
    pull: bool = True
    #: Where each babel node's folder (spec, socket, logs) is made; empty
    #: means ``/run/nodevisor-docker`` as root. Unix socket paths are short.
    babel_dir: str = ""

    @property
    def babel_root(self) -> Path:
        """The folder under which each babel node gets ``<host>/<node>/``."""
        if self.babel_dir:
            return Path(self.babel_dir)
        if os.getuid() == 0:
            return Path("/run/nodevisor-docker")
        return Path(f"/tmp/nodevisor-docker-{os.getuid()}")

    @property
    def address(self) -> str:
        """The engine's address, for messages."""
        return self.base_url or os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> DockerSettings:
        """Read the config table; raise ``ConfigError`` naming a bad key."""
        unknown = sorted(set(table) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"[runtimes.docker] has unknown keys {unknown}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        settings = cls(**table)
        _check(settings)
        return settings


def _check(settings: DockerSettings) -> None:
    checks = {
        "base_url": isinstance(settings.base_url, str),
        "timeout": _positive(settings.timeout, (int, float)),
        "max_threads": _positive(settings.max_threads, int),
        "pull": isinstance(settings.pull, bool),
        "babel_dir": isinstance(settings.babel_dir, str),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(
                f"[runtimes.docker] {key} = {getattr(settings, key)!r} is not valid: "
                f"expected a {_EXPECTED[key]}"
            )


_EXPECTED = {
    "base_url": "string such as 'unix:///var/run/docker.sock'",
    "timeout": "positive number of seconds",
    "max_threads": "positive integer",
    "pull": "boolean",
    "babel_dir": "path such as '/run/nodevisor-docker'",
}


def _positive(value: object, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0
