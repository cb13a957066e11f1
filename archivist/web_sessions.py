"""Web sessions: who is signed in to the web pages, kept in the active database.

The browser's cookie carries only a random session id, never the API token it was opened
with: a copied cookie is not a copied token, it expires, and signing out ends it for good. Like
tokens, only the SHA-256 of the id is stored. A session also remembers which secret of its
token it was opened with, so revoking the token or giving it a new secret ends its sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from archivist.active_db import ApiToken, Base, UTCDateTime
from archivist.tokens import TokenInfo, hash_token


class WebSession(Base):
    """A signed-in browser: the hash of its session id, its token and when it expires."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer, ForeignKey("api_tokens.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def _hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def start_web_session(
    session: Session, token_secret: str, at: datetime, lifetime: timedelta
) -> str | None:
    """Open a session for the live token with this secret; its id, or None if no such token."""
    token_sha256 = hash_token(token_secret)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_sha256))
    if row is None or row.revoked_at is not None:
        return None
    session.execute(delete(WebSession).where(WebSession.expires_at <= at))  # tidy as we go
    session_id = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_sha256=_hash_id(session_id),
            token_id=row.id,
            token_sha256=token_sha256,
            created_at=at,
            expires_at=at + lifetime,
        )
    )
    session.flush()
    return session_id


def find_web_session(session: Session, session_id: str, at: datetime) -> TokenInfo | None:
    """The token signed in with this session id, if the session and the token are still live."""
    row = session.execute(
        select(ApiToken, WebSession.expires_at)
        .join(WebSession, WebSession.token_id == ApiToken.id)
        .where(
            WebSession.id_sha256 == _hash_id(session_id),
            WebSession.token_sha256 == ApiToken.token_sha256,
        )
    ).first()
    if row is None:
        return None
    token, expires_at = row
    if expires_at <= at or token.revoked_at is not None:
        return None
    return TokenInfo(token.name, token.role, token.created_at)


def end_web_session(session: Session, session_id: str) -> None:
    """Sign out: the session id stops working everywhere at once."""
    session.execute(delete(WebSession).where(WebSession.id_sha256 == _hash_id(session_id)))
