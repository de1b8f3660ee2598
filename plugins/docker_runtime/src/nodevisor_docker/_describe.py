"""How a container looks to the agent: its state and how it last ended."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nodevisor import NodeState, RuntimeNode

from . import _labels

if TYPE_CHECKING:
    from docker.models.containers import Container

__all__ = ["describe", "exit_detail", "is_running", "was_killed"]

# A paused or restarting container still holds its processes.
_RUNNING = frozenset({"running", "paused", "restarting"})
_SIGKILL_EXIT = 128 + signal.SIGKILL


def is_running(container: Container) -> bool:
    """Whether the container's processes are alive."""
    return container.status in _RUNNING


def was_killed(state: Mapping[str, Any]) -> bool:
    """Whether the container's last process ended by SIGKILL."""
    return state.get("ExitCode") == _SIGKILL_EXIT


def describe(container: Container) -> RuntimeNode:
    """The node a container runs, as the agent sees it."""
    labels = container.labels
    running = is_running(container)
    return RuntimeNode(
        id=labels.get(_labels.NODE_ID, ""),
        name=labels.get(_labels.NAME, ""),
        state=NodeState.RUNNING if running else NodeState.STOPPED,
        image=container.attrs.get("Config", {}).get("Image", ""),
        url=labels.get(_labels.URL, ""),
        detail="" if running else exit_detail(container.attrs.get("State", {})),
    )


def exit_detail(state: Mapping[str, Any]) -> str:
    """A phrase saying how a stopped container's process ended."""
    code = state.get("ExitCode", 0)
    if state.get("Status") == "created":
        return "created, never started"
    if state.get("Error"):
        return f"failed to start: {state['Error']}"
    if state.get("OOMKilled"):
        return "killed by the kernel: out of memory"
    killer = _signal_name(code - 128) if code > 128 else None
    if killer is not None:
        return f"killed by {killer}"
    return f"exited with code {code}"


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None
