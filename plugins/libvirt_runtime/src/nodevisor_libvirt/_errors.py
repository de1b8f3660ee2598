"""libvirt errors translated into nodevisor's, at the boundary.

``libvirt.libvirtError`` becomes ``RuntimeFailure`` with the cause chained
and a message that says what was being done. A libvirtd that cannot be
reached is ``RuntimeUnavailable``, named as such with the URI, so that the
agent waits for it rather than counting the failure against the nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from nodevisor import RuntimeFailure, RuntimeUnavailable

__all__ = ["is_no_domain", "translated"]

_log = logging.getLogger(__name__)
#: Where libvirt raises an error about the connection to libvirtd itself:
#: its remote driver, or its RPC layer (a socket that cannot be connected).
_FROM_THE_WIRE = frozenset({libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC})
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
        text = exc.get_error_message() or str(exc)
        code = exc.get_error_code()
        if code in _UNREACHABLE and exc.get_error_domain() in _FROM_THE_WIRE:
            raise RuntimeUnavailable(
                f"failed to {what}: cannot reach libvirtd at {uri!r}: is libvirtd "
                f"running? ({text})"
            ) from exc
        failed = f"failed to {what}: {text} (libvirt error {code})"
        raise RuntimeFailure(failed) from exc
