"""``exclusive``: one agent, and one control plane, at a time on a data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodevisor import AgentLocked, NodevisorError
from nodevisor._lock import exclusive


class Taken(NodevisorError):
    pass


def refused(data_dir: Path, *holder: object) -> NodevisorError:
    """The error that taking the lock of ``holder`` on ``data_dir`` raises."""
    with pytest.raises(NodevisorError) as caught, exclusive(data_dir, *holder):
        pass
    return caught.value


def test_a_second_agent_is_refused_naming_its_pid_and_the_dir(tmp_path: Path):
    with exclusive(tmp_path):
        error = refused(tmp_path)
    assert isinstance(error, AgentLocked)
    assert str(error) == (
        f"another agent (pid {os.getpid()}) is running on {str(tmp_path)!r}; "
        "stop it first"
    )


def test_another_holder_is_named_and_refused_with_its_own_error(tmp_path: Path):
    with exclusive(tmp_path, "control plane", Taken):
        error = refused(tmp_path, "control plane", Taken)
        assert (tmp_path / "control-plane.lock").read_text() == str(os.getpid())
    assert isinstance(error, Taken)
    assert str(error).startswith(f"another control plane (pid {os.getpid()}) is")


def test_holders_of_different_names_do_not_exclude_each_other(tmp_path: Path):
    with exclusive(tmp_path), exclusive(tmp_path, "control plane", Taken):
        pass


def test_the_lock_is_free_again_once_released(tmp_path: Path):
    with exclusive(tmp_path, "control plane", Taken):
        pass
    with exclusive(tmp_path, "control plane", Taken):
        pass
