"""The reference control plane: what nodevisor agents talk to in tests and labs.

It serves the v1 wire contract to agents (``blockjoy.api.v1.Hosts`` and
``CommandFlow``) and ``nodevisor.admin.v1.AdminService`` to operators, and keeps
hosts, nodes, commands and every update in SQLite under its data dir. The
``nodevisor control-plane`` CLI drives it; ``nodevisor.controlplane.testing``
starts one in-process for tests.
"""

from __future__ import annotations

from ._client import AdminClient
from ._db import CommandState, Database
from ._errors import (
    CommandTimeout,
    ControlPlaneError,
    DataDirLocked,
    DataDirUnusable,
    InvalidRequest,
    NotFound,
    OtpRejected,
    Unauthenticated,
    Unavailable,
)
from ._server import ControlPlane, serve

__all__ = [
    "AdminClient",
    "CommandState",
    "CommandTimeout",
    "ControlPlane",
    "ControlPlaneError",
    "DataDirLocked",
    "DataDirUnusable",
    "Database",
    "InvalidRequest",
    "NotFound",
    "OtpRejected",
    "Unauthenticated",
    "Unavailable",
    "serve",
]
