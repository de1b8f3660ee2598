"""nodevisor: a host agent that runs blockchain nodes for a control plane.

The public surface for plugin authors is re-exported here; every other module
is private.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._catalogue import Catalogue, Release, parse_url
from ._errors import (
    AgentLocked,
    CatalogueError,
    CommandError,
    ConfigError,
    Conflict,
    CredentialsError,
    ExitCode,
    ImageUnavailable,
    InvalidArgument,
    InvalidCommand,
    InvalidTransition,
    NodeNotFound,
    NodevisorError,
    NotSupported,
    PluginError,
    RuntimeFailure,
    RuntimeUnavailable,
    ServiceNotReady,
    UpgradeFailed,
)
from ._hookspecs import hookimpl, hookspec
from ._interface import GenericCommand, Parameter, ProtocolInterface
from ._runtime import (
    CONTRACT_VERSION,
    Capabilities,
    ExecResult,
    NodeSpec,
    NodeState,
    ProtocolStatus,
    Runtime,
    RuntimeContext,
    RuntimeNode,
    StopOutcome,
)

try:
    __version__ = version("nodevisor")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CONTRACT_VERSION",
    "AgentLocked",
    "Capabilities",
    "Catalogue",
    "CatalogueError",
    "CommandError",
    "ConfigError",
    "Conflict",
    "CredentialsError",
    "ExecResult",
    "ExitCode",
    "GenericCommand",
    "ImageUnavailable",
    "InvalidArgument",
    "InvalidCommand",
    "InvalidTransition",
    "NodeNotFound",
    "NodeSpec",
    "NodeState",
    "NodevisorError",
    "NotSupported",
    "Parameter",
    "PluginError",
    "ProtocolInterface",
    "ProtocolStatus",
    "Release",
    "Runtime",
    "RuntimeContext",
    "RuntimeFailure",
    "RuntimeNode",
    "RuntimeUnavailable",
    "ServiceNotReady",
    "StopOutcome",
    "UpgradeFailed",
    "__version__",
    "hookimpl",
    "hookspec",
    "parse_url",
]
