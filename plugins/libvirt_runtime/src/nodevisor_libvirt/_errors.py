"""libvirt errors translated into nodevisor's, at the boundary.

``libvirt.libvirtError`` becomes ``RuntimeFailure`` with the cause chained
and a message that says what was being done; an unreachable libvirtd is
named as such, with the URI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from nodevisor import RuntimeFailure

__all__ = ["is_no_domain", "translated"]

_log = logging.getLogger(__name__)
_UNREACHABLE = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_INTERNAL_ERROR,
    }
)


def is_no_domain(exc: libvirt.libvirtError) -> bool:
    """Whether libvirt says the domain does not exist."""
    return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


@contextmanager
def translated(what: str, uri: str) -> Iterator[None]:
    """Turn a libvirt error raised inside into ``RuntimeFailure``."""
    try:
        yield
    except RuntimeFailure:
        _log.debug("%s: failed", what, exc_info=True)
        raise
    except libvirt.libvirtError as exc:
        _log.debug("%s: failed", what, exc_info=True)
        raise RuntimeFailure(_message(what, uri, exc)) from exc


def _message(what: str, uri: str, exc: libvirt.libvirtError) -> str:
    text = exc.get_error_message() or str(exc)
    code = exc.get_error_code()
    if code in _UNREACHABLE and exc.get_error_domain() == libvirt.VIR_FROM_REMOTE:
        return (
            f"failed to {what}: cannot reach libvirtd at {uri!r}: is libvirtd "
            f"running? ({text})"
        )
    return f"failed to {what}: {text} (libvirt error {code})"
