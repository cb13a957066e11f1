"""The OpenAPI document lists, for each endpoint, exactly the statuses it answers."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from server import close_app, create_app
from tests.test_server_damage import _garble, _segment_files

RECORD = "/api/v1/records/{record_id}"
RESTORE = "/api/v1/records/{record_id}/restore"
HOLD = "/api/v1/holds/{scope}/{value}"

# Statuses an endpoint answers only in conditions this test does not make, each with them.
NOT_PROVOKED_HERE = {
    # a record put into the active database by someone else while it is restored (a race),
    # or the CRM's own tables refusing a restored row
    ("POST", "/api/v1/restore"): {409},
}


class _Answers:
    """Requests sent to one app, and the statuses each endpoint answered them."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], set[int]] = defaultdict(set)

    def send(self, app: Flask, method: str, template: str, path: str | None = None,
             **kwargs: Any) -> int:
        response = app.test_client().open(path or template, method=method, **kwargs)
        response.close()
        self.seen[(method, template)].add(response.status_code)
        return response.status_code


@contextmanager
def _app(services: Any, **server: Any) -> Iterator[Flask]:
    config = dataclasses.replace(
        services.config, server=dataclasses.replace(services.config.server, **server)
    )
    app = create_app(config)
    try:
        yield app
    finally:
        close_app(app)


def _documented(app: Flask, headers: dict[str, str]) -> dict[tuple[str, str], set[int]]:
    doc = app.test_client().get("/api/v1/openapi.json", headers=headers).get_json()
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
    }


def test_openapi_lists_the_statuses_each_endpoint_answers(
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
    admin_headers: dict[str, str],
    agent_headers: dict[str, str],
) -> None:
    archived(*(make_record(id=f"P-{n}", customer_id=f"C-{n}", body="refund") for n in range(6)))
    answers = _Answers()
    send = answers.send
    admin, agent = {"headers": admin_headers}, {"headers": agent_headers}
    endpoints: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("GET", "/api/v1/search", "/api/v1/search?q=refund", {}),
        ("GET", RECORD, "/api/v1/records/P-0", {}),
        ("POST", RESTORE, "/api/v1/records/P-0/restore", {}),
        ("POST", "/api/v1/erase", None,
         {"json": {"record_id": "P-1", "reason": "asked", "dry_run": True}}),
        ("POST", "/api/v1/restore", None,
         {"json": {"ids": ["P-1"], "reason": "asked", "dry_run": True}}),
        ("GET", "/api/v1/export.csv", None, {}),
        ("GET", "/api/v1/export.csv.sha256", None, {}),
        ("GET", "/api/v1/audit", None, {}),
        ("GET", "/api/v1/disposals", None, {}),
        ("GET", "/api/v1/disposals.csv", None, {}),
        ("GET", "/api/v1/stats", None, {}),
        ("GET", "/api/v1/holds", None, {}),
        ("POST", "/api/v1/holds", None,
         {"json": {"scope": "record", "value": "P-5", "reason": "case"}}),
        ("DELETE", HOLD, "/api/v1/holds/record/P-5", {}),
        ("GET", "/api/v1/openapi.json", None, {}),
    ]
    with _app(services) as app:
        documented = _documented(app, admin_headers)
        send(app, "GET", "/healthz")
        for method, template, path, kwargs in endpoints:
            send(app, method, template, path, **admin, **kwargs)  # 200, 201, 204
            send(app, method, template, path, **admin, **kwargs)  # 409 where twice is too many
            send(app, method, template, path)  # 401: no token
            send(app, method, template, path, **agent)  # 403 where agent is not enough
            send(app, method, template, (path or template).split("?")[0] + "?nope=1",
                 **admin)  # 400: a parameter it does not take
        for template, path, body in (  # 400: a body that is not what it should be
            (RESTORE, "/api/v1/records/P-2/restore", [1]),
            ("/api/v1/erase", None, {"reason": "no target"}),
            ("/api/v1/restore", None, {"ids": "P-1"}),
            ("/api/v1/holds", None, {"scope": "planet"}),
        ):
            send(app, "POST", template, path, json=body, **admin)
        # 404: no such record
        send(app, "GET", RECORD, "/api/v1/records/NOPE", **admin)
        send(app, "POST", RESTORE, "/api/v1/records/NOPE/restore", **admin)
        send(app, "POST", "/api/v1/erase", json={"record_id": "NOPE", "reason": "x"}, **admin)
        # 409: a held record erased
        send(app, "POST", "/api/v1/holds", **admin,
             json={"scope": "record", "value": "P-3", "reason": "case"})
        send(app, "POST", "/api/v1/erase", json={"record_id": "P-3", "reason": "x"}, **admin)

    with _app(services, rate_limit_per_minute=1) as app:  # 429: once a minute only
        send(app, "GET", "/api/v1/stats", **admin)  # the once
        for method, template, path, kwargs in endpoints:
            send(app, method, template, path, **admin, **kwargs)

    with _app(services, max_request_bytes=64) as app:  # 413
        big = {"reason": "x" * 100}
        for template, path in ((RESTORE, "/api/v1/records/P-2/restore"),
                               ("/api/v1/erase", None), ("/api/v1/restore", None),
                               ("/api/v1/holds", None)):
            send(app, "POST", template, path, json=big, **admin)

    for path in _segment_files(services):  # 503: an archived record's segment damaged
        _garble(path)
    with _app(services) as app:
        send(app, "GET", RECORD, "/api/v1/records/P-2", **admin)
        send(app, "POST", RESTORE, "/api/v1/records/P-2/restore", **admin)
        send(app, "POST", "/api/v1/restore", json={"ids": ["P-4"], "reason": "x"}, **admin)
        (services.config.index_dir / "CURRENT").unlink()  # 503: the index damaged
        send(app, "GET", "/healthz")
        for method, template, path, kwargs in endpoints:
            send(app, method, template, path, **admin, **kwargs)
        send(app, "POST", "/api/v1/erase", json={"customer_id": "C-4", "reason": "x"}, **admin)

    assert set(answers.seen) == set(documented)  # every endpoint, and nothing else
    wrong = {
        operation: (sorted(answers.seen[operation]), sorted(statuses))
        for operation, statuses in documented.items()
        if answers.seen[operation] != statuses - NOT_PROVOKED_HERE.get(operation, set())
    }
    assert wrong == {}, "answered, documented: " + repr(wrong)
