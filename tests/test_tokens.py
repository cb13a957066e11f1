"""API tokens: created once, stored only as a hash, listed and revoked, from the library and CLI."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from archivist.active_db import ApiToken, utcnow
from archivist.tokens import (
    SYSTEM_ACTORS,
    TokenError,
    create_token,
    find_token,
    list_tokens,
    replace_token,
    revoke_token,
)
from cli.commands import main


def test_token_is_stored_only_as_its_hash(services: Any) -> None:
    with services.sessions.begin() as session:
        secret = create_token(session, "alice", "agent", utcnow())
    assert len(secret) >= 40
    with services.sessions.begin() as session:
        row = session.scalars(select(ApiToken)).one()
        assert row.token_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (row.name, row.role, row.token_sha256)
        info = find_token(session, secret)
    assert info is not None and (info.name, info.role) == ("alice", "agent")


def test_roles_include_the_lower_ones(services: Any) -> None:
    with services.sessions.begin() as session:
        secret = create_token(session, "aud", "auditor", utcnow())
        info = find_token(session, secret)
    assert info is not None
    assert info.allows("agent") and info.allows("auditor") and not info.allows("admin")


def test_revoked_token_is_not_found(services: Any) -> None:
    with services.sessions.begin() as session:
        secret = create_token(session, "bob", "admin", utcnow())
        revoke_token(session, "bob", utcnow(), ledger(services))
        assert find_token(session, secret) is None
        assert find_token(session, "made-up") is None
        assert list_tokens(session)[0].revoked_at is not None


@pytest.mark.parametrize(
    "name,role", [("x", "root"), ("", "agent"), ("has space", "agent"), ("a" * 129, "agent")]
)
def test_bad_role_or_name_is_refused(services: Any, name: str, role: str) -> None:
    with services.sessions.begin() as session, pytest.raises(TokenError):
        create_token(session, name, role, utcnow())


def test_a_token_cannot_take_the_name_of_archivist_s_own_actors(services: Any) -> None:
    """Its name is its actor in the audit log and in histories: `cli` or `archiver` would
    make its actions look like the command line's or the archive job's."""
    from indexer.jobs import archiver, crm_archiver, disposal, erasure, reconcile, runs

    own = {archiver.ACTOR, crm_archiver.ACTOR, crm_archiver.RECONCILE_ACTOR, disposal.ACTOR,
           erasure.LEDGER_ACTOR, reconcile.ACTOR, "cli",
           runs.run_dispose_job.__kwdefaults__["actor"]}
    assert own <= SYSTEM_ACTORS
    for name in (*sorted(own), "CLI", "Archiver"):
        with services.sessions.begin() as session, pytest.raises(TokenError, match="audit log"):
            create_token(session, name, "admin", utcnow())


def test_duplicate_name_and_unknown_revoke_are_refused(services: Any) -> None:
    with services.sessions.begin() as session:
        create_token(session, "carol", "agent", utcnow())
    with services.sessions.begin() as session, pytest.raises(TokenError, match="exists"):
        create_token(session, "carol", "admin", utcnow())
    with services.sessions.begin() as session, pytest.raises(TokenError, match="no token"):
        revoke_token(session, "dave", utcnow(), ledger(services))


def test_cli_token_create_list_revoke(services: Any, config_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["token", "create", "--role", "auditor", "--name", "ops", "--config", str(config_path)],
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert len(secret.splitlines()) == 1
    with services.sessions.begin() as session:
        assert find_token(session, secret) is not None
    listed = runner.invoke(main, ["token", "list", "--config", str(config_path)])
    assert listed.exit_code == 0
    assert listed.stdout.startswith("ops\tauditor\t")
    assert secret not in listed.stdout
    revoked = runner.invoke(main, ["token", "revoke", "ops", "--config", str(config_path)])
    assert revoked.exit_code == 0
    again = runner.invoke(main, ["token", "revoke", "ops", "--config", str(config_path)])
    assert again.exit_code == 1
    assert "revoked already" in again.stderr
    bad = runner.invoke(
        main, ["token", "create", "--role", "root", "--name", "x", "--config", str(config_path)]
    )
    assert bad.exit_code != 0


def test_replace_token_gives_a_new_secret_under_the_same_name(services: Any) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with services.sessions.begin() as session:
        first = replace_token(session, "demo-admin", "admin", at, ledger(services))
        revoke_token(session, "demo-admin", at, ledger(services))
        second = replace_token(session, "demo-admin", "admin", at, ledger(services))
        assert find_token(session, first) is None
        live = find_token(session, second)
        assert live is not None and (live.name, live.role) == ("demo-admin", "admin")
        assert [t.name for t in list_tokens(session)] == ["demo-admin"]


def ledger(services: Any) -> Any:
    """The installation's revocation ledger, beside its key file."""
    from archivist.tokens import revocation_ledger_path

    return revocation_ledger_path(services.config.key_file)
