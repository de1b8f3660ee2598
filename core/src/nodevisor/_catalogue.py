"""The protocol catalogue: what each protocol version runs, per runtime.

A catalogue is a directory of TOML files, one a protocol::

    protocol = "litecoin-regtest"
    description = "Litecoin in regtest mode"

    [node]                      # defaults for every version
    command = ["litecoind", "-regtest", "-datadir=/data"]
    ports = [19443]
    data_path = "/data"
    stop_signal = "SIGTERM"
    grace_period = 120          # seconds

    [versions."0.21.2-1".runtimes.docker]
    image = "nodevisor/litecoin-regtest:0.21.2-1"

A version may override any ``[node]`` key in ``[versions."<v>".node]``. Each
runtime table needs ``image``; any other keys are handed to the runtime as
``NodeSpec.options``. The control plane names a release as
``<protocol>/<version>``.

The ``[rpc]``, ``[methods.*]`` and ``[commands.*]`` tables say how babel asks
a node about itself and which generic commands the node takes; see
``nodevisor._interface``.
"""

from __future__ import annotations

import re
import signal
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from ._errors import CatalogueError, InvalidArgument, shown
from ._interface import ProtocolInterface
from ._runtime import NodeSpec

__all__ = ["Catalogue", "Release", "parse_url"]

_URL = re.compile(
    r"(?P<protocol>[a-z0-9][a-z0-9._-]*)/(?P<version>[A-Za-z0-9][A-Za-z0-9._+-]*)"
)


class _NodeDefaults(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    command: list[str] = []
    ports: list[int] = []
    data_path: str = "/data"
    stop_signal: str = "SIGTERM"
    grace_period: float = pydantic.Field(120.0, ge=0)
    environment: dict[str, str] = {}

    @pydantic.field_validator("stop_signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        if value not in signal.Signals.__members__:
            raise ValueError(f"{value!r} is not a signal name such as SIGTERM")
        return value


class _RuntimeEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    image: str


class _Version(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    node: dict[str, Any] = {}
    runtimes: dict[str, _RuntimeEntry]


class _ProtocolFile(ProtocolInterface):
    protocol: str = pydantic.Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    node: _NodeDefaults = _NodeDefaults()
    versions: dict[str, _Version]

    @property
    def interface(self) -> ProtocolInterface:
        return ProtocolInterface(
            rpc=self.rpc, methods=self.methods, commands=self.commands
        )


@dataclass(frozen=True)
class Release:
    """One version of a protocol, as one runtime runs it."""

    protocol: str
    version: str
    runtime: str
    image: str
    command: tuple[str, ...]
    ports: tuple[int, ...]
    data_path: str
    stop_signal: str
    grace_period: float
    environment: dict[str, str]
    options: dict[str, Any]
    #: What the protocol answers and which generic commands it takes.
    interface: ProtocolInterface = field(default_factory=ProtocolInterface)

    @property
    def url(self) -> str:
        return f"{self.protocol}/{self.version}"

    def node_spec(self, *, node_id: str, name: str, host_id: str) -> NodeSpec:
        """What a runtime needs to run node ``node_id`` on this release."""
        return NodeSpec(
            id=node_id,
            name=name,
            host_id=host_id,
            protocol=self.protocol,
            version=self.version,
            image=self.image,
            command=self.command,
            ports=self.ports,
            data_path=self.data_path,
            stop_signal=self.stop_signal,
            grace_period=self.grace_period,
            # Copies: a runtime may change its spec's, and the release is shared.
            environment=dict(self.environment),
            options=dict(self.options),
            interface=self.interface,
        )


def parse_url(url: str) -> tuple[str, str]:
    """Split ``<protocol>/<version>``; raise ``InvalidArgument`` if malformed."""
    match = _URL.fullmatch(url)
    if match is None:
        raise InvalidArgument(
            f"image url {shown(url)} is not of the form <protocol>/<version>, "
            "for example litecoin-regtest/0.21.2-1"
        )
    return match["protocol"], match["version"]


class Catalogue:
    """The protocols an agent knows, loaded from one or more directories."""

    def __init__(self, protocols: dict[str, _ProtocolFile]) -> None:
        self._protocols = protocols
        #: Releases resolved before, by url and runtime: a command resolves
        #: its node's release a few times, and building one is not cheap.
        self._resolved: dict[tuple[str, str], Release] = {}

    @classmethod
    def load(cls, directories: Iterable[Path]) -> Catalogue:
        protocols: dict[str, _ProtocolFile] = {}
        for directory in directories:
            if not directory.is_dir():
                what = "is not a directory" if directory.exists() else "does not exist"
                raise CatalogueError(f"catalogue directory {str(directory)!r} {what}")
            for path in sorted(directory.glob("*.toml")):
                spec = _read(path)
                protocols[spec.protocol] = spec
        return cls(protocols)

    def protocols(self) -> dict[str, list[str]]:
        """Each protocol's versions, in the order the files list them."""
        return {name: list(p.versions) for name, p in sorted(self._protocols.items())}

    def resolve(self, url: str, runtime: str) -> Release:
        """Return what ``url`` runs on ``runtime``; ``InvalidArgument`` if unknown."""
        release = self._resolved.get((url, runtime))
        if release is None:
            release = self._resolved[url, runtime] = self._resolve(url, runtime)
        return release

    def _resolve(self, url: str, runtime: str) -> Release:
        protocol, version = parse_url(url)
        spec = self._protocols.get(protocol)
        if spec is None:
            known = ", ".join(sorted(self._protocols)) or "none"
            raise InvalidArgument(
                f"image url {shown(url)}: protocol {shown(protocol)} is not in the "
                f"catalogue (known: {known})"
            )
        entry = spec.versions.get(version)
        if entry is None:
            raise InvalidArgument(
                f"image url {shown(url)}: protocol {protocol!r} has no version "
                f"{shown(version)} (known: {', '.join(spec.versions)})"
            )
        target = entry.runtimes.get(runtime)
        if target is None:
            raise InvalidArgument(
                f"image url {shown(url)} has no image for the {runtime!r} runtime "
                f"(it has: {', '.join(entry.runtimes) or 'none'})"
            )
        node = spec.node.model_copy(update=entry.node)
        return Release(
            protocol=protocol,
            version=version,
            runtime=runtime,
            image=target.image,
            command=tuple(node.command),
            ports=tuple(node.ports),
            data_path=node.data_path,
            stop_signal=node.stop_signal,
            grace_period=node.grace_period,
            environment=dict(node.environment),
            options=dict(target.model_extra or {}),
            interface=spec.interface,
        )


def _read(path: Path) -> _ProtocolFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogueError(
            f"protocol spec {str(path)!r} cannot be read: it is not UTF-8 text "
            f"(byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(
            f"protocol spec {str(path)!r} cannot be read: {exc}"
        ) from exc
    try:
        spec = _ProtocolFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _invalid(path, exc, ()) from exc
    for name, version in spec.versions.items():
        try:
            _NodeDefaults.model_validate(spec.node.model_dump() | version.node)
        except pydantic.ValidationError as exc:
            raise _invalid(path, exc, ("versions", name, "node")) from exc
    if path.stem != spec.protocol:
        raise CatalogueError(
            f"protocol spec {str(path)!r} declares protocol {spec.protocol!r}; "
            f"name the file {spec.protocol}.toml"
        )
    return spec


def _invalid(
    path: Path, exc: pydantic.ValidationError, within: tuple[str, ...]
) -> CatalogueError:
    """A spec's validation errors, one line each, named by their TOML key."""
    lines = [f"protocol spec {str(path)!r} is not valid:"]
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in (*within, *error["loc"]))
        if error["type"] == "missing":
            lines.append(f"  {key}: missing")
        elif error["type"] == "extra_forbidden":
            lines.append(f"  {key}: not a key a protocol spec has")
        elif error["type"] == "value_error":  # raised by a validator of ours
            lines.append(f"  {key}: {error['ctx']['error']}")
        else:
            lines.append(f"  {key} = {shown(error['input'])}: {error['msg']}")
    return CatalogueError("\n".join(lines))
