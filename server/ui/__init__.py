"""The web UI: server-rendered pages for agents, auditors and admins.

Every page calls the same functions as the JSON API (`server.actions`), so searches, reads,
exports, restores and hold changes made here land in the same audit log. Sign-in is with an API
token; Flask's signed session cookie (HttpOnly, SameSite=Lax, Secure when configured) holds a
server-side session id, never the token, looked up again on every request, so signing out or
revoking the token stops it here too. Every POST carries a per-session CSRF token.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "ui",
    __name__,
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/assets",
)

# The blueprint's pieces register themselves on `bp` when imported.
from server.ui import filters, session, views  # noqa: E402

__all__ = ["bp", "filters", "session", "views"]
