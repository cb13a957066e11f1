"""API tokens: random secrets shown once; only their SHA-256 is stored, with a name and a role."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from archivist.active_db import ApiToken
from archivist.errors import ArchivistError
from archivist.ledgers import append_entry, read_entries

ROLES = ("agent", "auditor", "admin")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@:-]{1,128}")
# The actors Archivist's own commands and jobs write into audit entries and histories: a token
# (whose name is its actor) must not pass for one of them.
SYSTEM_ACTORS = frozenset(
    {"cli", "worker", "archiver", "reconcile", "disposal", "erasure-ledger"}
)


class TokenError(ArchivistError):
    """A token command cannot be carried out (bad role or name, duplicate, unknown)."""

    code = "bad_token"


@dataclass(frozen=True)
class TokenInfo:
    """A token as shown to people and to the server: never the secret itself."""

    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, role: str) -> bool:
        """True when this token's role includes `role` (agent < auditor < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(secret: str) -> str:
    """The SHA-256 hex digest under which a token's secret is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str, role: str, at: datetime) -> str:
    """Store a new token and return its secret; the secret is not kept anywhere."""
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not NAME_PATTERN.fullmatch(name):
        raise TokenError("a token name is 1-128 characters of letters, digits and ._@:-")
    if name.lower() in SYSTEM_ACTORS:
        raise TokenError(f"{name!r} is the name Archivist's own {name.lower()} writes in the "
                         "audit log; give the token another name")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists already (revoked ones keep their name)")
    secret = secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_sha256=hash_token(secret), created_at=at))
    session.flush()
    return secret


def replace_token(
    session: Session, name: str, role: str, at: datetime, ledger: Path
) -> str:
    """Give the token `name` a new secret (creating it if need be) and return the secret.

    The old secret stops working, and so do the web sessions opened with it: for a token
    that is handed out again and again under one name, such as the demo's admin token.

    :param ledger: the revocation ledger (`revocation_ledger_path`), which lists the old secret
    """
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        return create_token(session, name, role, at)
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    append_entry(ledger, {"revoked": row.token_sha256})
    secret = secrets.token_urlsafe(32)
    row.role = role
    row.token_sha256 = hash_token(secret)
    row.created_at = at
    row.revoked_at = None
    session.flush()
    return secret


def find_token(session: Session, secret: str) -> TokenInfo | None:
    """The live (not revoked) token with this secret, or None."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return TokenInfo(row.name, row.role, row.created_at)


def token_is_live(session: Session, name: str) -> bool:
    """Whether the token `name` exists and is not revoked (a long export asks again).

    :param session: a session on the active database
    :param name: the token's name
    """
    revoked = session.execute(
        select(ApiToken.revoked_at).where(ApiToken.name == name)
    ).first()
    return revoked is not None and revoked[0] is None


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token, revoked ones included, oldest first."""
    rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))
    return [TokenInfo(r.name, r.role, r.created_at, r.revoked_at) for r in rows]


def revoke_token(session: Session, name: str, at: datetime, ledger: Path) -> None:
    """Revoke a token by name; it stops working (the server notices within seconds).

    :param ledger: the revocation ledger (`revocation_ledger_path`): written first, so that a
        backup taken before the revocation does not bring the token back when recovered
    """
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is not None:
        raise TokenError(f"token {name!r} is revoked already")
    append_entry(ledger, {"revoked": row.token_sha256})
    row.revoked_at = at


def revocation_ledger_path(key_file: Path) -> Path:
    """The ledger of revoked token secrets, beside the archive key file (like the erasure
    ledger, outside every backup).

    :param key_file: `[archive] key_file`
    """
    return key_file.with_name(key_file.name + ".revoked")


def ledger_earlier_revocations(sessions: sessionmaker[Session], ledger: Path) -> int:
    """List in the revocation ledger every revoked token it does not list yet (revoked by a
    version that kept no ledger); returns how many. A ledger is made only if there are some:
    its absence beside a copied key is what tells a recovery the ledger was not copied.

    :param sessions: sessions on the active database
    :param ledger: the revocation ledger
    """
    listed = {e["revoked"] for e in read_entries(ledger) if isinstance(e.get("revoked"), str)}
    with sessions.begin() as session:
        revoked = session.scalars(
            select(ApiToken.token_sha256).where(ApiToken.revoked_at.is_not(None))
        ).all()
    missing = sorted(set(revoked) - listed)
    for token_sha256 in missing:
        append_entry(ledger, {"revoked": token_sha256})
    return len(missing)


def apply_revocation_ledger(session: Session, ledger: Path, at: datetime) -> int:
    """Revoke again, after a backup was recovered, every token whose secret the ledger lists
    as revoked since; returns how many.

    :param session: a write session on the recovered active database
    :param ledger: the revocation ledger
    :param at: when
    """
    revoked = {e["revoked"] for e in read_entries(ledger) if isinstance(e.get("revoked"), str)}
    count = 0
    for row in session.scalars(select(ApiToken).where(ApiToken.revoked_at.is_(None))):
        if row.token_sha256 in revoked:
            row.revoked_at = at
            count += 1
    return count
