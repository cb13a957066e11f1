"""Crash points for the crash-safety tests: kill this process at a named step, on request.

`ARCHIVIST_CRASH_AT=name:n` makes the n-th pass through `crash_point(name)` end the process
with SIGKILL, exactly as a power cut or an OOM kill would. Unset, a crash point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill the process here if `ARCHIVIST_CRASH_AT` names this point and pass."""
    wanted = os.environ.get("ARCHIVIST_CRASH_AT")
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
