"""Secrets: host tokens, one-time passwords and the admin token.

Only hashes of host tokens and one-time passwords are stored. They are random
enough that a plain SHA-256 is a safe lookup key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from ._errors import Unauthenticated

__all__ = [
    "ADMIN_TOKEN_FILE",
    "bearer_token",
    "digest",
    "ensure_admin_token",
    "new_secret",
    "read_admin_token",
]

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"


def new_secret() -> str:
    """A random secret, safe to put in metadata and on a command line."""
    return secrets.token_urlsafe(24)


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the call's ``authorization: Bearer <token>`` metadata."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    value = values[0] if isinstance(values[0], str) else values[0].decode()
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            f"authorization metadata is not 'Bearer <token>': scheme {scheme!r}"
        )
    return token.strip()


def ensure_admin_token(data_dir: Path) -> str:
    """Read the admin token of ``data_dir``, writing a new one (0600) if absent."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_admin_token(data_dir)
    with os.fdopen(fd, "w") as file:
        file.write(new_secret() + "\n")
    log.info("wrote a new admin token to %s", path)
    return read_admin_token(data_dir)


def read_admin_token(data_dir: Path) -> str:
    """The admin token that the control plane of ``data_dir`` wrote."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise Unauthenticated(
            f"no admin token at {path}: start the control plane with this data dir"
        ) from None
    if not token:
        raise Unauthenticated(f"the admin token file {path} is empty")
    return token
