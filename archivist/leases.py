"""Named leases in the active database: one holder at a time runs a job, across processes."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from archivist.active_db import Lease


def this_process() -> str:
    """How a lease holder or a job run names the process: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(name: str) -> bool:
    """Whether a process named by `this_process` (a holder may add `:tag`) is known to have
    ended: it ran on this host, and no process has its pid now. One on another host, or whose
    pid is in use again, is taken to be alive."""
    host, _, rest = name.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process
        return False
    return False


def acquire_lease(session: Session, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take (or extend) the lease if it is free, expired or already ours, or if its holder's
    process has ended (killed: it never gave the lease back); True on success."""
    held = session.execute(select(Lease.holder).where(Lease.name == name)).scalar()
    if held is not None and held != holder and process_gone(held):
        session.execute(delete(Lease).where(Lease.name == name, Lease.holder == held))
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Lease).values(name=name, holder=holder, expires_at=now + ttl)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=(Lease.expires_at < now) | (Lease.holder == holder),
    )
    # RETURNING, not rowcount: drivers disagree on rowcount for a skipped ON CONFLICT update
    return session.execute(stmt.returning(Lease.name)).first() is not None


def release_lease(session: Session, name: str, holder: str) -> None:
    """Give the lease back, if we still hold it."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def lease_holder(session: Session, name: str, now: datetime) -> str | None:
    """Who holds the lease, or None: it must be taken, not expired, and its holder's process
    must not have ended (killed, it never gave the lease back; `acquire_lease` takes it over)."""
    stmt = select(Lease.holder).where(Lease.name == name, Lease.expires_at >= now)
    holder = session.scalar(stmt)
    return holder if holder is not None and not process_gone(holder) else None


def lease_held(session: Session, name: str, now: datetime) -> bool:
    """Whether anyone holds the lease (see `lease_holder`)."""
    return lease_holder(session, name, now) is not None
