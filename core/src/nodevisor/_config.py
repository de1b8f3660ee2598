"""The agent's configuration: a TOML file, with environment overrides.

Every key can be set in the file or as ``NODEVISOR_<KEY>`` in the
environment; the environment wins. Tables nest with ``__``:
``NODEVISOR_RUNTIMES__DOCKER__BASE_URL``. An example file::

    api_url = "127.0.0.1:50051"
    data_dir = "/var/lib/nodevisor"
    runtime = "docker"
    catalogue = ["/etc/nodevisor/protocols"]

    [runtimes.docker]
    base_url = "unix:///var/run/docker.sock"
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pydantic
from pydantic import ValidationInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from ._errors import ConfigError

__all__ = [
    "BUILTIN_CATALOGUE",
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "check_api_url",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/nodevisor/config.toml")
BUILTIN_CATALOGUE = Path(__file__).parent / "catalogue"


class AgentConfig(BaseSettings):
    """What the agent reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="NODEVISOR_",
        env_nested_delimiter="__",
        extra="forbid",
        allow_inf_nan=False,
    )

    #: The control plane's gRPC address, ``host:port``. ``provision`` stores
    #: the address it used; set this to reach the control plane elsewhere.
    api_url: str = "127.0.0.1:50051"
    #: Where the agent keeps its state, credentials and snapshots.
    data_dir: Path = Path("/var/lib/nodevisor")
    #: The runtime that new nodes use, by name.
    runtime: str = "docker"
    #: Catalogue directories, loaded after the built-in one; a later
    #: protocol file replaces an earlier one of the same protocol.
    catalogue: list[Path] = []
    #: The host's name as the control plane shows it; the hostname if unset.
    name: str | None = None
    location: str | None = None
    #: Per-runtime settings, handed to the runtime as they are.
    runtimes: dict[str, dict[str, Any]] = {}
    #: Seconds that running commands get to finish when the agent stops.
    shutdown_grace: float = pydantic.Field(30.0, ge=0)
    #: Seconds one runtime step of a node (pull, create, start, stop...) may
    #: take before the command fails and the node's lane goes on.
    step_timeout: float = pydantic.Field(1800.0, gt=0)
    #: Seconds between two HostInfo heartbeats on an open stream.
    heartbeat_interval: float = pydantic.Field(20.0, gt=0)
    #: Seconds a sent update may wait for the control plane's confirmation
    #: before the stream is taken for dead and opened again.
    heartbeat_timeout: float = pydantic.Field(20.0, gt=0)
    #: Seconds between two passes of the reconciler.
    reconcile_interval: float = pydantic.Field(15.0, gt=0)
    #: Failed attempts to converge a node before it is reported failed.
    reconcile_attempts: int = pydantic.Field(5, ge=1)
    #: Days the agent remembers a finished command (to answer it again if
    #: the control plane resends it) once the control plane has its result.
    command_history_days: float = pydantic.Field(30.0, gt=0)
    #: Seconds between two refreshes of running nodes' protocol status
    #: (height, sync) through runtimes that can ask (babel).
    protocol_interval: float = pydantic.Field(10.0, gt=0)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would take true for 1: a number of seconds or attempts
        # given as true/false is a mistake, not a number.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field and field.annotation in (int, float):
            raise ValueError(f"{str(value).lower()} is not a number")
        return value

    @pydantic.field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return check_api_url(value)

    @property
    def api_url_set(self) -> bool:
        """Whether ``api_url`` was given (file or environment), not defaulted."""
        return "api_url" in self.model_fields_set

    @property
    def catalogue_dirs(self) -> list[Path]:
        return [BUILTIN_CATALOGUE, *self.catalogue]


# gRPC's own target syntax (dns:, unix:, ...) passes as it is written.
_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
#: ``host:port``, ``[ipv6]:port``: an address, as agents and control planes
#: write it.
HOST_PORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})"
)


def check_api_url(value: str) -> str:
    """Return ``value`` if gRPC can dial it; raise ``ValueError`` saying why not.

    A control plane address is ``host:port`` (``[::1]:port`` for IPv6), or a
    gRPC target such as ``dns:///host:port`` or ``unix:/path``.
    """
    scheme = next((s for s in _GRPC_SCHEMES if value.startswith(s)), None)
    if scheme is not None:
        if not value[len(scheme) :].strip("/"):
            raise ValueError(f"{value!r} names no address after {scheme!r}")
        return value
    if "://" in value:
        raise ValueError(
            f"{value!r} is a URL; write the control plane's address as host:port"
        )
    match = HOST_PORT.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not an address: expected host:port (for example "
            "api.example.com:50051), [ipv6]:port, or a gRPC target such as "
            "dns:///host:port or unix:/path"
        )
    if not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r} has port {match['port']}; a port is 1-65535")
    return value


def load_config(path: Path | None = None) -> AgentConfig:
    """Read the config file (if any) and apply environment overrides.

    ``path`` defaults to ``$NODEVISOR_CONFIG``, then ``/etc/nodevisor/config.toml``;
    only an explicitly named file must exist.
    """
    explicit = path or (
        Path(os.environ["NODEVISOR_CONFIG"])
        if os.environ.get("NODEVISOR_CONFIG")
        else None
    )
    file = explicit or DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if explicit is not None or file.exists():
        data = _read_toml(file)
    misspelled = _misspelled_variables()
    if misspelled:
        raise ConfigError("\n".join(misspelled))
    try:
        from_env = AgentConfig()
    except (pydantic.ValidationError, SettingsError) as exc:
        raise ConfigError(
            f"a NODEVISOR_* environment variable is not valid:\n"
            f"{_explain(exc, prefix='NODEVISOR_')}"
        ) from exc
    overrides = {
        key: getattr(from_env, key)
        for key in from_env.model_fields_set
        if key != "runtimes"
    }
    runtimes = _merged(data.pop("runtimes", {}), _runtime_overrides())
    try:
        return AgentConfig.model_validate(data | overrides | {"runtimes": runtimes})
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"config {str(file)!r} is not valid:\n{_explain(exc)}"
        ) from exc


def _explain(exc: pydantic.ValidationError | SettingsError, prefix: str = "") -> str:
    """One line per problem: the key, what is wrong, and the value given.

    With ``prefix``, keys are named as environment variables.
    """
    if not isinstance(exc, pydantic.ValidationError):
        # pydantic-settings could not parse a value it reads as JSON (a
        # list, say): name the variable, its value and the form it needs.
        found = re.search(r'field "(\w+)"', str(exc))
        if found is None:
            return f"  {exc}"
        variable = prefix + found[1].upper()
        value = os.environ.get(variable, "")
        return (
            f"  {variable} = {value!r}: not JSON; a list or table is written "
            "as JSON, for example '[\"/etc/nodevisor/protocols\"]'"
        )
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(the file)"
        if prefix:
            key = prefix + key.upper().replace(".", "__")
        if error["type"] == "extra_forbidden":
            known = ", ".join(sorted(AgentConfig.model_fields))
            lines.append(f"  {key}: not a known key (known keys: {known})")
            continue
        message = error["msg"]
        if error["type"] == "value_error":  # raised by a validator of ours
            message = str(error["ctx"]["error"])
            lines.append(f"  {key}: {message}")
            continue
        lines.append(f"  {key} = {error['input']!r}: {message}")
    return "\n".join(lines)


#: ``NODEVISOR_*`` variables that are not config keys: nodevisor's other
#: commands read them.
OTHER_VARIABLES = frozenset({"config", "cp_url", "cp_data_dir", "babel_node"})


def _misspelled_variables() -> list[str]:
    """A line for each ``NODEVISOR_*`` variable that looks like a key, misspelled.

    The file refuses a key it does not know; a variable that is no key would
    be ignored, and a typo would silently leave the default in place. Names
    close to no key may be any tool's, and pass.
    """
    keys = [key for key in AgentConfig.model_fields if key != "runtimes"]
    problems = []
    for name in sorted(os.environ):
        if not name.startswith("NODEVISOR_") or name.startswith("NODEVISOR_RUNTIMES__"):
            continue
        key = name[len("NODEVISOR_") :].lower()
        if key in keys or key in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
        if close:
            problems.append(
                f"{name} is not a config variable; did you mean "
                f"NODEVISOR_{close[0].upper()}?"
            )
    return problems


def _runtime_overrides() -> dict[str, Any]:
    """``NODEVISOR_RUNTIMES__<NAME>__<KEY>=value`` as nested tables.

    A value that reads as JSON (a number, ``true``, a list) is taken as such,
    since the runtime settings have no declared types; anything else stays
    a string.
    """
    prefix = "NODEVISOR_RUNTIMES__"
    tables: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if not name.startswith(prefix):
            continue
        *path, last = name[len(prefix) :].lower().split("__")
        table = tables
        for part in path:
            table = table.setdefault(part, {})
        table[last] = _value(raw)
    return tables


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {exc}") from exc
