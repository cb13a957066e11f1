"""The CRM's PostgreSQL down, or refusing Archivist's role a privilege: the server answers 503
naming the database (not a 500), the command line one line and exit 1 (not "unexpected")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.tokens import create_token
from indexer.jobs.runs import run_archive_job
from indexer.services import Services
from server import close_app, create_app
from tests.pg import find_pg_bin, run_postgres
from tests.test_cli import archivist
from tests.test_crm_tables import DATA, EXAMPLE, run_sql, write_config

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)


def _admit(url: str, allowed: bool) -> None:
    """Let connections to the database in, or shut them out and end every one it has."""
    engine = create_engine(url.replace("/archivist?", "/postgres?"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"ALTER DATABASE archivist ALLOW_CONNECTIONS {str(allowed)}"))
        if not allowed:
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'archivist' AND pid <> pg_backend_pid()"
            ))
    engine.dispose()


def test_the_database_down_is_503_naming_it_and_serving_resumes_after(tmp_path: Path) -> None:
    with run_postgres() as url:
        run_sql(url, (EXAMPLE / "schema.sql").read_text())
        run_sql(url, DATA)
        config = load_config(write_config(tmp_path, url))
        with Services.open(config, create=True) as services:
            run_archive_job(services, utcnow())
            with services.sessions.begin() as session:
                secret = create_token(session, "admin", "admin", utcnow())
        app = create_app(config)
        try:
            client = app.test_client()
            headers = {"Authorization": f"Bearer {secret}"}
            assert client.get("/api/v1/search?q=refund", headers=headers).status_code == 200

            _admit(url, False)
            # The index answers a search alone; its audit entry waits for the database.
            assert client.get("/api/v1/search?q=outage", headers=headers).status_code == 200
            for response in (
                client.get("/api/v1/records/case:10", headers=headers),
                client.post("/api/v1/records/case:10/restore", headers=headers,
                            json={"reason": "asked"}),
            ):
                assert response.status_code == 503, response.get_json()
                error = response.get_json()["error"]
                assert error["code"] == "database_unavailable"
                assert error["message"].startswith("the active database is unavailable: ")
                assert "archivist" in error["message"]  # what PostgreSQL said: which database
            page = client.get("/search?q=refund")  # a page: the error page, not JSON
            assert page.status_code in (303, 302, 503)  # (signed out: to the sign-in page)
            cli = archivist("stats", "--config", str(config.path))
            assert cli.returncode == 1
            assert cli.stderr.startswith("error: the active database: ")
            assert len(cli.stderr.strip().splitlines()) == 1

            _admit(url, True)
            answer = client.get("/api/v1/records/case:10", headers=headers)
            assert answer.status_code == 200 and answer.get_json()["archive"]["state"] == "archived"
            audit = client.get("/api/v1/audit?action=search", headers=headers).get_json()
            assert [e["target"] for e in audit["entries"]] == ["outage", "refund"]
        finally:
            close_app(app)


def test_a_role_without_a_privilege_gets_one_line_naming_the_database(tmp_path: Path) -> None:
    with run_postgres() as url:
        run_sql(url, (EXAMPLE / "schema.sql").read_text())
        run_sql(url, DATA)
        owner = write_config(tmp_path, url)
        with Services.open(load_config(owner), create=True):
            pass  # Archivist's own tables, made by their owner
        # every right on Archivist's tables, but the CRM's may only be read
        run_sql(url, "CREATE ROLE clerk LOGIN; GRANT USAGE ON SCHEMA public TO clerk; "
                     "GRANT ALL ON ALL TABLES IN SCHEMA public TO clerk; "
                     "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO clerk; "
                     "REVOKE INSERT, UPDATE, DELETE ON cases, case_messages, notes FROM clerk")
        config = tmp_path / "clerk.toml"
        config.write_text(owner.read_text().replace("postgres@", "clerk@"))
        result = archivist("archive", "--as-of", "2026-06-01", "--config", str(config))
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()[-1:]
        assert line.startswith("error: the active database: ") and "permission denied" in line
        assert "unexpected" not in result.stderr
