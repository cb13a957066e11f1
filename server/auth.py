"""Bearer tokens: look a token up (briefly cached), check its role, apply its rate limit."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import MethodNotAllowed, NotFound

from archivist.active_db import utcnow
from archivist.audit import AuditEvent
from archivist.tokens import ROLES, TokenInfo, find_token
from server.errors import Forbidden, RateLimited, Unauthorized, request_id
from server.limits import RateLimiter

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_MAX_CACHED = 10_000


class TokenLookup:
    """Finds the token of a secret, remembering answers for a few seconds.

    Look-ups read in read-only transactions (``Services.read_sessions``), which do not wait for
    an archive batch's write lock; a revocation is noticed within `ttl` seconds.
    """

    def __init__(self, sessions: sessionmaker[Session], ttl: float) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[TokenInfo | None, float]] = {}

    def find(self, secret: str) -> TokenInfo | None:
        """The live token with this secret, or None."""
        key = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self._sessions.begin() as session:
            info = find_token(session, secret)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (info, now + self._ttl)
        return info


def current_token() -> TokenInfo:
    """The token of this request (set by `require_role`)."""
    token: TokenInfo = g.token
    return token


def _authenticate() -> TokenInfo:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        _refuse(401, "missing bearer token")
        raise Unauthorized(
            "an 'Authorization: Bearer TOKEN' header is required",
            {"WWW-Authenticate": 'Bearer realm="archivist"'},
        )
    if len(secret) > 256 or not secret.isascii():
        info = None
    else:
        lookup: TokenLookup = current_app.extensions["archivist_tokens"]
        info = lookup.find(secret)
    if info is None:
        _refuse(401, "unknown or revoked token")
        raise Unauthorized(
            "the token is unknown or revoked",
            {"WWW-Authenticate": 'Bearer realm="archivist", error="invalid_token"'},
        )
    return info


def refuse_unrouted_without_token() -> None:
    """Check the token of an API request no route takes as asked, before Flask answers it
    405 or 404: every API path needs a token, so one without is told 401, as anywhere else,
    rather than which methods or endpoints there are. (A view checks its own token.)"""
    unrouted = isinstance(request.routing_exception, MethodNotAllowed | NotFound)
    if unrouted and (request.path == "/api/v1" or request.path.startswith("/api/v1/")):
        _authenticate()


def _refuse(status: int, reason: str, name: str | None = None) -> None:
    log.warning(
        "request %s: %d %s %s%s: %s",
        request_id(),
        status,
        request.method,
        request.path,
        f" by token {name!r}" if name else "",
        reason,
    )


def audit_denied(token: TokenInfo, role: str) -> None:
    """Record in the audit log that the token tried what its role does not allow."""
    event = AuditEvent(utcnow(), token.name, "denied", f"{request.method} {request.path}",
                       "forbidden", {"needs": role, "role": token.role})
    current_app.extensions["archivist_audit"].record(event, wait=False)


def require_role(role: str) -> Callable[[F], F]:
    """Let a request through only with a live token whose role includes `role`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _authenticate()
            if not token.allows(role):
                _refuse(403, f"needs role {role}, has {token.role}", token.name)
                audit_denied(token, role)
                raise Forbidden(f"this needs the {role} role; the token has {token.role}")
            limiter: RateLimiter = current_app.extensions["archivist_limiter"]
            wait = limiter.take(token.name)
            if wait is not None:
                _refuse(429, "rate limit", token.name)
                raise RateLimited(
                    "too many requests for this token; slow down",
                    {"Retry-After": str(max(1, round(wait + 0.5)))},
                )
            g.token = token
            return view(*args, **kwargs)

        setattr(wrapper, "required_role", role)  # noqa: B010 - read by the OpenAPI builder
        return wrapper  # type: ignore[return-value]

    return decorate
