"""Run a program so that the kernel kills it when its parent ends.

    python -I -S _deathsig.py PARENT PROGRAM ARG0 [ARG...]

babel runs this file as a script (see ``_procs.die_with_parent``); it is not
imported. It sets the parent-death signal (Linux's ``PR_SET_PDEATHSIG``) to
SIGKILL, restores the signals Python ignores (as subprocess does), then
replaces itself with ``PROGRAM`` (a path), run with ``ARG0 ARG...`` as its
arguments. The node's process keeps this process's id, group, environment,
working directory and output, and dies when babel does, even by SIGKILL.
The signal survives the exec, but not into a set-user-ID program or one with
file capabilities.

babel cannot set the signal itself between fork and exec: that takes a
``preexec_fn``, hence a real ``fork()`` of a process that runs gRPC's threads,
and gRPC's fork handlers can crash the child.

``PARENT`` is babel's pid: if babel ended before the signal was set, the
process kills itself, as the signal would have.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main(parent: str, program: str, *argv: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        error = os.strerror(ctypes.get_errno())
        sys.exit(f"babel: cannot set the parent-death signal: prctl: {error}")
    if os.getppid() != int(parent):  # babel ended before the prctl
        os.kill(os.getpid(), signal.SIGKILL)
    # Python ignores these; an ignored signal stays ignored across exec.
    # subprocess's restore_signals does the same for babel's children.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(program, argv)
    except OSError as exc:
        sys.exit(f"babel: cannot run {program!r}: {exc.strerror}")


if __name__ == "__main__":
    main(*sys.argv[1:])
