"""The Flask app: API v1 under /api/v1 and /healthz, around one set of services."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from archivist.active_db import create_schema
from archivist.audit import AuditWriter
from archivist.config import Config, default_config_path, load_config
from indexer.services import Services
from server import api, ui
from server.auth import TokenLookup, refuse_unrouted_without_token
from server.bodies import LimitedRequest, StrictJSONProvider
from server.errors import register_error_handlers
from server.health import check_health
from server.limits import RateLimiter
from server.openapi import build_openapi

log = logging.getLogger(__name__)


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app around one set of services (database, store, index)."""
    config = config or load_config(default_config_path())
    app = Flask(__name__)
    # `records/x%2F/restore` arrives as `records/x//restore`: merged, it was redirected (308,
    # method and body kept) to the restore of another record, `x`. No id holds a slash.
    app.url_map.merge_slashes = False
    app.request_class = LimitedRequest  # a chunked body past the limit: 413, not cut short
    app.json = StrictJSONProvider(app)  # too deep or lone surrogates: 400, not a 500
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_request_bytes
    services = Services.open(config)
    # Idempotent: adds the server's own tables (tokens, audit log) to an older installation.
    create_schema(services.engine)
    app.extensions["archivist"] = services
    app.extensions["archivist_audit"] = AuditWriter(services.sessions)
    app.extensions["archivist_tokens"] = TokenLookup(
        services.read_sessions, config.server.token_cache_seconds
    )
    app.extensions["archivist_limiter"] = RateLimiter(config.server.rate_limit_per_minute)
    app.extensions["archivist_openapi"] = build_openapi()
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(ui.bp)
    register_error_handlers(app)
    app.before_request(refuse_unrouted_without_token)  # after the request's own checks

    @app.get("/healthz")
    def healthz() -> Any:
        reason = check_health(services)
        if reason is None:
            return {"status": "ok"}
        log.error("health check failed: %s", reason)
        return {"status": "unavailable", "reason": reason}, 503

    return app


def close_app(app: Flask) -> None:
    """Write what the audit log still has queued, then release files and connections."""
    app.extensions["archivist_audit"].close()
    app.extensions["archivist"].close()
