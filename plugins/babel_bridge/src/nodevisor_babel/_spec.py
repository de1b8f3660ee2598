"""The node spec babel runs from: one JSON file, written by the runtime."""

from __future__ import annotations

import signal
from pathlib import Path

import pydantic

from nodevisor import ProtocolInterface

__all__ = ["BabelSpec"]


class BabelSpec(pydantic.BaseModel):
    """What babel needs to run one node and answer for it."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    node_id: str
    protocol: str = ""
    #: The node's program and its arguments, run as they are (no shell).
    command: tuple[str, ...]
    environment: dict[str, str] = {}
    #: Directories put first on the processes' ``PATH``.
    path: tuple[str, ...] = ()
    #: The processes' working directory: the node's chain data.
    workdir: Path
    stop_signal: str = "SIGTERM"
    grace_period: float = pydantic.Field(120.0, ge=0)
    interface: ProtocolInterface = ProtocolInterface()
    #: The processes' output is kept in ``logs/node.log``, rotated at this
    #: size, with this many older files.
    log_max_bytes: int = pydantic.Field(10_000_000, gt=0)
    log_backups: int = pydantic.Field(3, ge=0)
    #: Seconds before a process that ended on its own is started again;
    #: doubled on each quick failure, up to a minute.
    restart_delay: float = pydantic.Field(1.0, gt=0)

    @property
    def signal(self) -> signal.Signals:
        return signal.Signals[self.stop_signal]

    @classmethod
    def read(cls, path: Path) -> BabelSpec:
        return cls.model_validate_json(path.read_text())

    def write(self, path: Path) -> None:
        partial = path.with_suffix(".tmp")
        partial.write_text(self.model_dump_json(indent=2))
        partial.replace(path)
