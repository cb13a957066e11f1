"""Crash points for the crash-safety tests: kill this process at a named step, on request.

`ARCHIVIST_CRASH_AT=name:n` makes the n-th pass through `crash_point(name)` end the process
with SIGKILL, exactly as a power cut or an OOM kill would. `ARCHIVIST_FAIL_AT=name:n` makes
it raise `OSError(ENOSPC)` instead, as a full disk would: the run fails with an error rather
than dying. `ARCHIVIST_STOP_AT=name:n` stops it there with SIGSTOP until it gets SIGCONT, so
that a test can run other commands at that very step of it. Unset, a crash point costs three
dictionary lookups.
"""

from __future__ import annotations

import errno
import os
import signal

_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill the process here if `ARCHIVIST_CRASH_AT` names this point and pass (or raise a
    disk-full error if `ARCHIVIST_FAIL_AT` does, or stop it until continued if
    `ARCHIVIST_STOP_AT` does)."""
    if _reached("ARCHIVIST_STOP_AT", name):
        os.kill(os.getpid(), signal.SIGSTOP)
    if _reached("ARCHIVIST_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached("ARCHIVIST_FAIL_AT", name):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"(fault injected at {name})")


def _reached(variable: str, name: str) -> bool:
    wanted = os.environ.get(variable)
    if not wanted:
        return False
    point, _, count = wanted.partition(":")
    if point != name:
        return False
    key = f"{variable}:{name}"
    _passes[key] = _passes.get(key, 0) + 1
    return _passes[key] == int(count or 1)
