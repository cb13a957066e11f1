"""Property-based fuzzing of the whole API from its own OpenAPI document: never a 5xx."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from server import close_app, create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def fuzzed_app(
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> Iterator[Any]:
    archived(
        *[
            make_record(
                id=f"F-{n}",
                body=f"refund 退款 INV-2023-{n:06d} <b>x</b>",
                created_at=f"20{10 + n % 10}-0{1 + n % 9}-01T00:00:00Z",
            )
            for n in range(30)
        ]
    )
    server = dataclasses.replace(services.config.server, rate_limit_per_minute=1_000_000)
    app = create_app(dataclasses.replace(services.config, server=server))
    yield app
    close_app(app)


def _fuzz(strategy: Any, headers: dict[str, str], examples: int) -> list[int]:
    statuses: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message"}

    check()
    return statuses


@pytest.mark.parametrize(
    "operation,examples",
    [
        (None, 1000),  # every operation of the document
        ("/api/v1/search", 600),
        ("/api/v1/audit", 200),
    ],
)
def test_api_never_answers_5xx_to_generated_requests(
    fuzzed_app: Any, admin_headers: dict[str, str], operation: str | None, examples: int
) -> None:
    schema = schemathesis.openapi.from_wsgi(
        "/api/v1/openapi.json", fuzzed_app, headers=admin_headers
    )
    strategy = schema.as_strategy() if operation is None else schema[operation]["GET"].as_strategy()
    statuses = _fuzz(strategy, admin_headers, examples)
    assert len(statuses) >= examples
    assert 200 in statuses
