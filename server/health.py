"""`/healthz`: can the active database and the search index be read right now."""

from __future__ import annotations

from indexer.errors import IndexerError
from indexer.services import Services


def check_health(services: Services) -> str | None:
    """None when healthy, else a one-line reason."""
    try:
        # A raw DBAPI connection: an ORM transaction would begin IMMEDIATE on SQLite and wait
        # behind an archive batch's write lock.
        connection = services.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT count(*) FROM api_tokens")
            cursor.fetchall()
            cursor.close()
        finally:
            connection.close()
    except Exception as e:
        return f"database cannot be read: {type(e).__name__}: {str(e)[:200]}"
    try:
        # (not a count: that would take an archive run's new segments before they are warm;
        # it also checks the files as the next process to start would open them)
        services.index.check_readable()
    except IndexerError as e:
        return f"index cannot be read: {str(e).removeprefix('the index cannot be read: ')[:200]}"
    except Exception as e:  # Whoosh's own errors, missing files
        return f"index cannot be read: {type(e).__name__}: {str(e)[:200]}"
    try:
        services.store.check_readable()
    except Exception as e:
        return f"archive store cannot be read: {type(e).__name__}: {str(e)[:200]}"
    return None
