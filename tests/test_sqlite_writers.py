"""Writers of the SQLite active database queue on a lock file beside it; readers never do."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from archivist.active_db import (
    Lease,
    create_schema,
    make_engine,
    make_read_sessions,
    make_sessions,
)
from archivist.sqlite_writers import writers_lock_path

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _lock_file(services: Any) -> Path:
    return writers_lock_path(Path(services.config.active_url.removeprefix("sqlite:///")).absolute())


@contextmanager
def _probe(path: Path) -> Iterator[Any]:
    """A descriptor of our own on the lock file: flock on it conflicts with every other."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _taken(path: Path) -> bool:
    with _probe(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


def _lease(name: str) -> Lease:
    return Lease(name=name, holder="test", expires_at=T0)


def test_a_write_transaction_holds_its_turn_until_it_ends(services: Any) -> None:
    path = _lock_file(services)
    with services.sessions.begin() as session:
        session.connection()  # the transaction begins at its first statement
        assert _taken(path)
        session.add(_lease("REC-1"))
    assert not _taken(path)
    with services.read_sessions.begin() as session:  # readers do not queue
        session.connection()
        assert not _taken(path)
        assert session.scalar(select(func.count()).select_from(Lease)) == 1


def test_a_failed_transaction_gives_its_turn_back(services: Any) -> None:
    path = _lock_file(services)
    with pytest.raises(RuntimeError), services.sessions.begin() as session:
        session.add(_lease("REC-1"))
        raise RuntimeError("boom")
    assert not _taken(path)
    with services.sessions.begin() as session:
        session.add(_lease("REC-1"))
    with pytest.raises(IntegrityError), services.sessions.begin() as session:
        session.add(_lease("REC-1"))  # fails at the flush, inside the transaction
    assert not _taken(path)
    with services.sessions.begin() as session:  # and the next writer gets in
        session.add(_lease("REC-2"))


def test_a_writer_waits_for_the_turn_another_process_holds(services: Any) -> None:
    """While another process holds the turn, a write waits; it proceeds once it is given back."""
    path = _lock_file(services)
    wrote = threading.Event()

    def write() -> None:
        with services.sessions.begin() as session:
            session.add(_lease("REC-9"))
        wrote.set()

    with _probe(path) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = threading.Thread(target=write)
        writer.start()
        assert not wrote.wait(0.5)
        with services.read_sessions.begin() as session:  # meanwhile, reads go on
            assert session.scalar(select(func.count()).select_from(Lease)) == 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        writer.join(10)
    assert wrote.is_set()


def test_threads_of_one_process_write_one_at_a_time(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'active.db'}")
    create_schema(engine)
    sessions, reads = make_sessions(engine), make_read_sessions(engine)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                with sessions.begin() as session:
                    session.add(_lease(f"REC-{n}-{i}"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with reads.begin() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) == 80
    assert not _taken(writers_lock_path(tmp_path / "active.db"))
    engine.dispose()
