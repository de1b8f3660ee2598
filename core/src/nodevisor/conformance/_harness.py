"""What a runtime author hands the conformance suite."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .._runtime import ExecResult, NodeSpec, Runtime

__all__ = ["NODE_FIELDS", "Harness"]

#: The ``NodeSpec`` fields that ``Harness.node`` and ``stubborn_node`` may set.
NODE_FIELDS = frozenset(
    {
        "command",
        "ports",
        "data_path",
        "stop_signal",
        "grace_period",
        "environment",
        "options",
    }
)
# The argv passes the content and the path as arguments: nothing is quoted
# into the script, so no value can change what the shell runs.
_WRITE_SCRIPT = 'printf "%s" "$1" > "$0"'
_EXEC_TIMEOUT = 30.0


@dataclass(kw_only=True)
class Harness:
    """The runtime under test, and how the suite reaches into its nodes."""

    #: The ``Runtime`` subclass under test.
    runtime_class: type[Runtime]
    #: ``RuntimeContext.data_dir`` of every runtime instance the suite builds.
    data_dir: Path
    #: ``RuntimeContext.settings`` of every runtime instance.
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Two image references: nodes are created on the first, upgraded to the
    #: second.
    images: tuple[str, str]
    #: The other ``NodeSpec`` fields of every node (see ``NODE_FIELDS``).
    node: Mapping[str, Any] = field(default_factory=dict)
    #: ``NodeSpec`` field changes that make a node ignore its stop signal;
    #: ``None`` skips the grace-period check.
    stubborn_node: Mapping[str, Any] | None = None
    #: ``RuntimeContext.settings`` that point the runtime at an engine that
    #: does not answer; ``None`` skips the unreachable-engine check.
    unreachable_settings: Mapping[str, Any] | None = None
    #: Seconds any one call of the runtime (or of a hook of this harness) may
    #: take before the check fails naming it; ``stop`` and ``exec`` have
    #: their own limits (see ``margin``).
    timeout: float = 60.0
    #: Seconds a stop may take past the node's grace period, and an exec past
    #: its timeout: the time to kill and to answer. Widen it on a slow machine.
    margin: float = 5.0

    def __post_init__(self) -> None:
        _check_images(self.images)
        _check_fields("node", self.node)
        _check_fields("stubborn_node", self.stubborn_node or {})
        _check_seconds("timeout", self.timeout)
        _check_seconds("margin", self.margin)

    async def write_data(
        self, runtime: Runtime, spec: NodeSpec, name: str, content: str
    ) -> None:
        """Write ``content`` to the file ``name`` in the running node's data."""
        path = posixpath.join(spec.data_path, name)
        argv = ["sh", "-c", _WRITE_SCRIPT, path, content]
        result = await _exec(runtime, spec, argv, "write_data")
        if result.exit_code != 0:
            raise AssertionError(
                f"writing {path!r} in node {spec.id} with {argv!r} exited with "
                f"code {result.exit_code}: {result.stderr or result.stdout!r}"
            )

    async def read_data(
        self, runtime: Runtime, spec: NodeSpec, name: str
    ) -> str | None:
        """The file ``name`` in the running node's data, or ``None`` if absent."""
        path = posixpath.join(spec.data_path, name)
        result = await _exec(runtime, spec, ["cat", path], "read_data")
        return result.stdout if result.exit_code == 0 else None

    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """Remove the node behind the runtime's back, as an operator might."""
        _not_overridden(runtime, "remove_out_of_band")

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """Kill the running node behind the runtime's back, as a crash would."""
        _not_overridden(runtime, "stop_out_of_band")


def _not_overridden(runtime: Runtime, method: str) -> None:
    pytest.skip(
        f"the harness of runtime {runtime.name!r} does not override Harness.{method}"
    )


async def _exec(
    runtime: Runtime, spec: NodeSpec, argv: list[str], method: str
) -> ExecResult:
    if not runtime.capabilities.exec:
        pytest.skip(
            f"runtime {runtime.name!r} declares no exec capability and its harness "
            f"does not override Harness.{method}"
        )
    return await runtime.exec(spec, argv, _EXEC_TIMEOUT)


def _check_images(images: tuple[str, str]) -> None:
    valid = isinstance(images, tuple | list) and len(images) == 2
    if not valid or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"Harness.images must be two image references, got {images!r}")
    if images[0] == images[1]:
        raise ValueError(
            f"Harness.images must differ for the upgrade checks, got {images!r}"
        )


def _check_seconds(what: str, value: object) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(
            f"Harness.{what} must be a positive number of seconds, got {value!r}"
        )


def _check_fields(what: str, changes: Mapping[str, Any]) -> None:
    unknown = sorted(set(changes) - NODE_FIELDS)
    if unknown:
        raise ValueError(
            f"Harness.{what} has keys {unknown} that are not NodeSpec fields it "
            f"may set; allowed: {sorted(NODE_FIELDS)}"
        )
