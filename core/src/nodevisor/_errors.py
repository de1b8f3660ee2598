"""The errors nodevisor raises.

Every error is a ``NodevisorError``. Errors that end a command carry the exit
code the agent reports for it in ``CommandInfo.exit_code``::

    NodevisorError
    ├── ConfigError              a config file or value is wrong
    ├── CatalogueError           a protocol spec is wrong or missing
    ├── PluginError              a plugin could not be loaded or does not fit
    ├── CredentialsError         the host is not provisioned, or its files are bad
    ├── AgentLocked              another agent uses the same data directory
    ├── RuntimeFailure           a runtime could not carry out an operation
    │   ├── ImageUnavailable     the image a node needs cannot be had
    │   └── RuntimeUnavailable   the runtime's engine cannot be reached
    └── CommandError             a command cannot be carried out (has exit_code)
        ├── InvalidCommand       no command, or one the agent does not know
        ├── NodeNotFound         no node with that id
        ├── InvalidTransition    the node's status does not allow the command
        ├── NotSupported         the agent or runtime cannot do it
        ├── ServiceNotReady      a runtime or engine is not available
        ├── UpgradeFailed        an upgrade failed; the node keeps its image
        ├── InvalidArgument      a bad name, image url or protocol
        └── Conflict             clashes with another node (a taken name)

Runtimes raise ``RuntimeFailure`` (or a subclass) with the engine's error
chained as ``__cause__``; the agent turns it into a result with
``ExitCode.RUNTIME_ERROR``, or ``ExitCode.SERVICE_NOT_READY`` for
``RuntimeUnavailable``. Anything else a runtime's step raises is a bug of its
plugin; the agent logs it and handles it as a ``RuntimeFailure`` that names
the runtime and the exception, so the node's status is still settled.
"""

from __future__ import annotations

import enum

__all__ = [
    "AgentLocked",
    "CatalogueError",
    "CommandError",
    "ConfigError",
    "Conflict",
    "CredentialsError",
    "ExitCode",
    "ImageUnavailable",
    "InvalidArgument",
    "InvalidCommand",
    "InvalidTransition",
    "NodeNotFound",
    "NodevisorError",
    "NotSupported",
    "PluginError",
    "RuntimeFailure",
    "RuntimeUnavailable",
    "ServiceNotReady",
    "UpgradeFailed",
    "shown",
]


def shown(value: object, limit: int = 80) -> str:
    """``value`` quoted for an error message, a long string cut short.

    A message quotes what it refuses; a value of megabytes must not make a
    message too large to send.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


class ExitCode(enum.IntEnum):
    """The values of ``CommandInfo.exit_code`` (``CommandExitCode`` in proto)."""

    OK = 0
    INTERNAL_ERROR = 1
    INVALID_COMMAND = 2
    NODE_NOT_FOUND = 3
    INVALID_TRANSITION = 4
    NOT_SUPPORTED = 5
    SERVICE_NOT_READY = 6
    UPGRADE_FAILED = 7
    INVALID_ARGUMENT = 8
    CONFLICT = 9
    RUNTIME_ERROR = 10


class NodevisorError(Exception):
    """The base of every error nodevisor raises on purpose."""


class ConfigError(NodevisorError):
    """A config file or value is wrong."""


class CatalogueError(NodevisorError):
    """A protocol spec is wrong, or a protocol or version is not in it."""


class PluginError(NodevisorError):
    """A plugin could not be loaded, or does not fit the contract."""


class CredentialsError(NodevisorError):
    """The host has not been provisioned, or its credentials are unreadable."""


class AgentLocked(NodevisorError):
    """Another agent process runs on the same data directory."""


class RuntimeFailure(NodevisorError):
    """A runtime could not carry out an operation on a node."""


class ImageUnavailable(RuntimeFailure):
    """The image a node needs is not on this host and cannot be had."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime's engine (dockerd, libvirtd) cannot be reached; try later."""


class CommandError(NodevisorError):
    """A command cannot be carried out; ``exit_code`` is what the agent reports."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class InvalidCommand(CommandError):
    exit_code = ExitCode.INVALID_COMMAND


class NodeNotFound(CommandError):
    exit_code = ExitCode.NODE_NOT_FOUND


class InvalidTransition(CommandError):
    exit_code = ExitCode.INVALID_TRANSITION


class NotSupported(CommandError):
    exit_code = ExitCode.NOT_SUPPORTED


class ServiceNotReady(CommandError):
    exit_code = ExitCode.SERVICE_NOT_READY


class UpgradeFailed(CommandError):
    exit_code = ExitCode.UPGRADE_FAILED


class InvalidArgument(CommandError):
    exit_code = ExitCode.INVALID_ARGUMENT


class Conflict(CommandError):
    exit_code = ExitCode.CONFLICT
