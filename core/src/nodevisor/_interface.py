"""What a protocol answers and accepts: its methods and generic commands.

A protocol spec may declare, next to what a node runs, how to ask the node
about itself and which commands it takes::

    [rpc]                        # where JSON-RPC and REST calls go
    url = "http://127.0.0.1:19443/"
    user = "nodevisor"           # HTTP basic auth, optional
    password = "nodevisor-regtest"

    [methods.height]             # block height: an integer
    jsonrpc = "getblockcount"

    [methods.sync_status]        # mapped to NodeInfo.SyncStatus
    jsonrpc = "getblockchaininfo"
    pointer = "/initialblockdownload"
    map = { "true" = "Syncing", "false" = "Synced" }

    [commands.mine]
    description = "mine n blocks"
    jsonrpc = "generatetodescriptor"
    params = ["{n}", "raw(51)#8lvh9jxk"]

    [commands.mine.parameters.n]
    type = "int"
    min = 1
    max = 1000

The methods are ``height``, ``sync_status``, ``app_status``, ``peers`` and
``onchain_name``. Each call is one of ``jsonrpc = "<method>"`` (with
``params``), ``rest = "<path>"`` (a GET below ``rpc.url``) or ``exec = [argv]``
(a program run on the node, never through a shell); ``pointer`` is a JSON
pointer into the answer (the JSON-RPC ``result``, the REST body, or the
program's output read as JSON; without it the whole answer), and ``map``
turns the value found (as text; JSON ``true`` reads ``"true"``) into a
status name.

A generic command's ``params`` (or ``exec`` argv) may hold placeholders: an
element that is exactly ``"{name}"`` of a declared parameter is replaced by
the parameter's value, whole and typed. A placeholder is never part of a
longer string, so no value is ever spliced into a command line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from ._errors import InvalidArgument, NotSupported, shown

__all__ = [
    "APP_STATUSES",
    "METHODS",
    "SYNC_STATUSES",
    "Call",
    "GenericCommand",
    "Parameter",
    "ProtocolInterface",
    "Rpc",
    "Value",
]

#: The methods a protocol may declare, as ``[methods.<name>]``.
METHODS = ("height", "sync_status", "app_status", "peers", "onchain_name")
#: ``NodeInfo.SyncStatus`` names a ``sync_status`` map may produce.
SYNC_STATUSES = frozenset({"Syncing", "Synced"})
#: ``NodeInfo.ApplicationStatus`` names an ``app_status`` map may produce.
APP_STATUSES = frozenset(
    {
        "Broadcasting", "Cancelled", "Delegating", "Delinquent", "Disabled",
        "Earning", "Electing", "Elected", "Exporting", "Ingesting", "Mining",
        "Minting", "Processing", "Relaying", "Removed", "Removing",
    }
)  # fmt: skip

Value = int | float | str | bool
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_NAME = r"[a-z][a-z0-9_]*"


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class Rpc(_Model):
    """The node's HTTP endpoint for JSON-RPC and REST calls."""

    url: str = ""
    user: str = ""
    password: str = ""


class Call(_Model):
    """One question to the node, and where the answer is in what comes back."""

    jsonrpc: str | None = None
    rest: str | None = None
    exec: tuple[str, ...] | None = None
    params: tuple[Any, ...] = ()
    pointer: str = pydantic.Field("", pattern=r"^(/.*)?$")
    map: dict[str, str] = {}
    timeout: float = pydantic.Field(10.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> Call:
        kinds = [k for k in ("jsonrpc", "rest", "exec") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of jsonrpc, rest or exec "
                f"(given: {', '.join(kinds) or 'none'})"
            )
        if self.params and not self.jsonrpc:
            raise ValueError("params go with jsonrpc; exec takes its argv as it is")
        return self

    @property
    def kind(self) -> str:
        return "jsonrpc" if self.jsonrpc else "rest" if self.rest else "exec"


class Parameter(_Model):
    """A declared parameter of a generic command."""

    type: Literal["int", "float", "str", "bool"]
    description: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Value, ...] = ()
    #: A regular expression a ``str`` value must match whole.
    pattern: str | None = None
    #: Taken when the command does not give the parameter; without it, the
    #: parameter is required.
    default: Value | None = None

    def check(self, command: str, name: str, value: object) -> Value:
        """Return ``value`` as this parameter's type; ``InvalidArgument`` if not."""
        where = f"parameter {name!r} of command {command!r}"
        typed = _typed(self.type, value)
        if typed is None:
            raise InvalidArgument(f"{where} must be {self.type}, got {shown(value)}")
        if isinstance(typed, int | float) and not isinstance(typed, bool):
            if self.min is not None and typed < self.min:
                raise InvalidArgument(f"{where} is {typed}; at least {self.min:g}")
            if self.max is not None and typed > self.max:
                raise InvalidArgument(f"{where} is {typed}; at most {self.max:g}")
        if self.choices and typed not in self.choices:
            allowed = ", ".join(map(repr, self.choices))
            raise InvalidArgument(f"{where} is {shown(typed)}; one of {allowed}")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(typed)):
            raise InvalidArgument(
                f"{where} is {shown(typed)}, which does not match {self.pattern!r}"
            )
        return typed


def _typed(kind: str, value: object) -> Value | None:
    match kind, value:
        case "bool", bool():
            return value
        case "int", int() if not isinstance(value, bool):
            return value
        case "int", str() if re.fullmatch(r"[+-]?[0-9]{1,18}", value):
            return int(value)
        case "float", int() | float() if not isinstance(value, bool):
            return float(value)
        case "str", str():
            return value
    return None


class GenericCommand(Call):
    """A command operators may run on a node, with its declared parameters."""

    description: str = ""
    parameters: dict[str, Parameter] = {}

    @pydantic.field_validator("parameters")
    @classmethod
    def _names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"parameter name {name!r} is not [a-z][a-z0-9_]*")
        return value

    @pydantic.model_validator(mode="after")
    def _placeholders_declared(self) -> GenericCommand:
        for element in self.exec or self.params:
            if not isinstance(element, str) or "{" not in element:
                continue
            match = _PLACEHOLDER.fullmatch(element)
            if match is None or match[1] not in self.parameters:
                raise ValueError(
                    f"{element!r} is not a whole placeholder of a declared "
                    f"parameter (declared: {', '.join(self.parameters) or 'none'})"
                )
        return self

    def check(self, name: str, given: Mapping[str, object]) -> dict[str, Value]:
        """Every parameter's checked value; ``InvalidArgument`` for a misfit."""
        unknown = sorted(set(given) - set(self.parameters))
        if unknown:
            raise InvalidArgument(
                f"command {name!r} has no parameter {shown(unknown[0])} "
                f"(it takes: {', '.join(self.parameters) or 'none'})"
            )
        values: dict[str, Value] = {}
        for key, parameter in self.parameters.items():
            if key in given:
                values[key] = parameter.check(name, key, given[key])
            elif parameter.default is not None:
                values[key] = parameter.default
            else:
                raise InvalidArgument(f"command {name!r} needs parameter {key!r}")
        return values

    def substitute(self, values: Mapping[str, Value]) -> tuple[Any, ...]:
        """``params`` (or the ``exec`` argv) with each placeholder replaced."""
        return tuple(_replace(element, values) for element in self.exec or self.params)


def _replace(element: Any, values: Mapping[str, Value]) -> Any:
    if isinstance(element, str):
        match = _PLACEHOLDER.fullmatch(element)
        if match is not None:
            return values[match[1]]
    return element


class ProtocolInterface(_Model):
    """A protocol's methods and generic commands, from its spec."""

    rpc: Rpc = Rpc()
    methods: dict[str, Call] = {}
    commands: dict[str, GenericCommand] = {}

    @pydantic.field_validator("methods")
    @classmethod
    def _known_methods(cls, value: dict[str, Call]) -> dict[str, Call]:
        for name, call in value.items():
            if name not in METHODS:
                raise ValueError(f"{name!r} is not a method ({', '.join(METHODS)})")
            allowed = {"sync_status": SYNC_STATUSES, "app_status": APP_STATUSES}
            bad = set(call.map.values()) - allowed.get(name, set(call.map.values()))
            if bad:
                raise ValueError(f"method {name!r} maps to unknown statuses {bad}")
        return value

    @pydantic.field_validator("commands")
    @classmethod
    def _command_names(
        cls, value: dict[str, GenericCommand]
    ) -> dict[str, GenericCommand]:
        for name in value:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"command name {name!r} is not [a-z][a-z0-9_]*")
        return value

    def command(self, protocol: str, name: str) -> GenericCommand:
        """The declared command ``name``; ``NotSupported`` naming it if none."""
        found = self.commands.get(name)
        if found is None:
            declared = ", ".join(sorted(self.commands)) or "none"
            raise NotSupported(
                f"protocol {protocol!r} declares no generic command {shown(name)} "
                f"(declared: {declared}); nothing was run"
            )
        return found
