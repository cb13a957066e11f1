"""`archivist serve` keeps answering while many clients send half a request, and says why it
closes them; gunicorn's own refusals are the contract's JSON errors."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.http_worker import BODY_READ_SECONDS, BODY_SECONDS, HEAD_SECONDS, MAX_BUFFERED_BODY
from tests.test_server_process import _get, _serve

pytestmark = pytest.mark.slow


@pytest.fixture
def served(
    services: Any,
    config_path: Path,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> Iterator[tuple[str, str]]:
    yield from _serve(config_path, archived, make_record)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _raw(
    port: int, request: bytes, timeout: float = 20
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send raw bytes; return the status, the JSON body and the headers of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), json.loads(body), headers


def _raw_with_body(
    port: int, token: str, body: bytes
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return _raw(
        port,
        b"POST /api/v1/holds HTTP/1.1\r\nHost: archivist\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Content-Type: application/json\r\n\r\n" + body,
    )


def test_searches_and_healthz_answer_while_500_clients_send_half_a_request(
    served: tuple[str, str],
) -> None:
    base, token = served
    port = _port(base)
    slow: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /api/v1/search?q=kettle HTTP/1.1\r\nHost: archivist\r\n")
            slow.append(sock)
        # Untimed: its answer means the server has taken in every connection opened before it
        # (one listen queue, first in first out), so the timed requests below queue behind none.
        assert _get(f"{base}/healthz")[0] == 200
        for _ in range(5):
            started = time.monotonic()
            status, body, _ = _get(f"{base}/api/v1/search?q=kettle", token)
            assert (status, json.loads(body)["total"]) == (200, 1)
            assert _get(f"{base}/healthz")[0] == 200
            assert time.monotonic() - started < 5
        # A client that never finishes its request is told so, then closed.
        error = _timed_out_answer(slow[0], HEAD_SECONDS + 15)
        assert error["code"] == "request_timeout"
    finally:
        for sock in slow:
            sock.close()
    status, body, _ = _get(f"{base}/api/v1/search?q=kettle", token)
    assert status == 200


def _timed_out_answer(sock: socket.socket, wait: float) -> dict[str, str]:
    """The error of the 408 a server sends a client that did not finish, read to the close."""
    sock.settimeout(wait)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{16}\r\n", head + b"\r\n"), head
    error: dict[str, str] = json.loads(body)["error"]
    return error


def test_searches_answer_while_140_clients_stop_half_way_through_a_body(
    served: tuple[str, str],
) -> None:
    base, token = served
    port = _port(base)
    stalled: list[socket.socket] = []
    try:
        for _ in range(140):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(
                b"POST /api/v1/holds HTTP/1.1\r\nHost: archivist\r\n"
                + f"Authorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"scope\""
            )
            stalled.append(sock)
        assert _get(f"{base}/healthz")[0] == 200  # untimed, as above
        started = time.monotonic()
        status, body, _ = _get(f"{base}/api/v1/search?q=kettle", token)
        assert (status, json.loads(body)["total"]) == (200, 1)
        assert _get(f"{base}/healthz")[0] == 200
        assert time.monotonic() - started < 5
        hold = json.dumps({"scope": "customer", "value": "C-9", "reason": "audit"}).encode()
        status, answer, _ = _raw_with_body(port, token, hold)
        assert status == 201 and answer["value"] == "C-9"
        # A body that never comes is told so, with the body's own time limit.
        error = _timed_out_answer(stalled[0], BODY_SECONDS + 15)
        assert f"body was not complete within {BODY_SECONDS:g} s" in error["message"]
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 10_000 + b"\r\n\r\n",
         431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
         + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
         431, "headers_too_large"),
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n", 400, "bad_request"),
    ],
)
def test_errors_gunicorn_answers_itself_are_json(
    served: tuple[str, str], request_bytes: bytes, status: int, code: str
) -> None:
    base, _ = served
    answer_status, body, headers = _raw(_port(base), request_bytes)
    assert (answer_status, body["error"]["code"]) == (status, code)
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    assert headers["Content-Type"] == "application/json"
    assert re.fullmatch("[0-9a-f]{16}", headers["X-Request-Id"])


def test_a_kept_alive_connection_serves_request_after_request(served: tuple[str, str]) -> None:
    import http.client

    base, token = served
    connection = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=20)
    try:
        for q in ("kettle", "%E9%80%80%E6%AC%BE", "kettle"):  # the second is 退款
            connection.request(
                "GET", f"/api/v1/search?q={q}", headers={"Authorization": f"Bearer {token}"}
            )
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["total"] == 1
            assert response.getheader("Connection", "keep-alive").lower() != "close"
        hold = json.dumps({"scope": "record", "value": "P-1", "reason": "kept"})
        connection.request(
            "POST", "/api/v1/holds", body=hold,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert connection.getresponse().status == 201
    finally:
        connection.close()


def test_a_body_in_malformed_chunks_is_400_not_500(served: tuple[str, str]) -> None:
    base, token = served
    for path in ("/api/v1/restore", "/api/v1/erase", "/api/v1/holds"):
        for chunks in (
            b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hex
            b"-1\r\n{}\r\n0\r\n\r\n",  # nor negative
            b"2\r\n{}xx0\r\n\r\n",  # no line break after the chunk
        ):
            status, body, headers = _raw(
                _port(base),
                f"POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n".encode()
                + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunks,
            )
            assert (status, body["error"]["code"]) == (400, "bad_request"), (path, chunks, body)
            assert body["error"]["message"].startswith("the request body is malformed")
            assert headers["Content-Type"] == "application/json"
    for form in ("/sign-in", "/sign-out", "/admin/holds"):  # the web UI's forms: a page
        with socket.create_connection(("127.0.0.1", _port(base)), timeout=20) as sock:
            sock.sendall(f"POST {form} HTTP/1.1\r\nHost: a\r\n".encode()
                         + b"Content-Type: application/x-www-form-urlencoded\r\n"
                         + b"Transfer-Encoding: chunked\r\n\r\nzz\r\ntoken=x\r\n0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), (form, answer[:200])
        assert b"malformed pieces" in answer, form
    assert _get(f"{base}/healthz")[0] == 200
    assert json.loads(_get(f"{base}/api/v1/holds", token)[1])["holds"] == []  # none placed


def _chunked(path: str, token: str, body: bytes, chunk: int = 65536) -> bytes:
    """A POST of `body` as JSON in chunks of `chunk` bytes, then the last chunk."""
    pieces = b"".join(
        b"%x\r\n" % len(body[i:i + chunk]) + body[i:i + chunk] + b"\r\n"
        for i in range(0, len(body), chunk)
    )
    return (
        f"POST {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".encode()
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + pieces + b"0\r\n\r\n"
    )


def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_done(
    served: tuple[str, str],
) -> None:
    base, token = served
    port = _port(base)
    limit = 1 << 20  # server.max_request_bytes by default
    # JSON that is whole within the limit, then more: cut off at the limit it would be obeyed.
    hold = json.dumps({"scope": "record", "value": "P-1", "reason": "x"}).encode()
    restore = json.dumps({"ids": ["P-2"], "reason": "x"}).encode()
    for path, body in (
        ("/api/v1/holds", hold + b" " * (2 * limit) + b"GARBAGE"),
        ("/api/v1/restore", restore + b" " * (2 * limit) + b"GARBAGE"),
        ("/api/v1/holds", b'{"reason": "' + b"x" * (2 * limit) + b'"}'),
        ("/api/v1/holds", hold + b" " * (limit + 1 - len(hold))),  # one byte over
    ):
        status, answer, headers = _raw(port, _chunked(path, token, body))
        assert (status, answer["error"]["code"]) == (413, "payload_too_large"), (path, answer)
        assert "over 1,048,576 bytes" in answer["error"]["message"]
        assert headers["Content-Type"] == "application/json"
    # Up to the limit, a chunked body is read as one with a Content-Length.
    status, answer, _ = _raw(
        port, _chunked("/api/v1/holds", token, hold + b" " * (limit - len(hold)))
    )
    assert (status, answer["value"]) == (201, "P-1")
    holds = json.loads(_get(f"{base}/api/v1/holds", token)[1])["holds"]
    assert [h["value"] for h in holds] == ["P-1"]  # the one within the limit only
    status, body, _ = _get(f"{base}/api/v1/records/P-2", token)
    assert json.loads(body)["archive"]["state"] == "archived"  # nor was P-2 restored


@pytest.fixture
def served_large_bodies(
    services: Any,
    config_path: Path,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> Iterator[tuple[str, str]]:
    """`served`, taking bodies larger than the worker reads before a thread takes them."""
    with config_path.open("a") as config:
        config.write(f"\n[server]\nmax_request_bytes = {4 * MAX_BUFFERED_BODY}\n")
    yield from _serve(config_path, archived, make_record)


def test_a_chunked_or_large_body_that_stops_arriving_is_408(
    served_large_bodies: tuple[str, str],
) -> None:
    base, token = served_large_bodies
    port = _port(base)
    head = (
        b"POST /api/v1/holds HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
    )
    stalled = []
    try:
        for request in (
            head + b'Transfer-Encoding: chunked\r\n\r\n8\r\n{"scope"\r\n',
            # too large to be read before a thread takes it: the thread reads it
            head + b"Content-Length: %d\r\n\r\n{\"scope\"" % (MAX_BUFFERED_BODY + 10),
        ):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(request)
            stalled.append(sock)
        for sock in stalled:
            error = _timed_out_answer(sock, BODY_READ_SECONDS + 15)
            assert error == {
                "code": "request_timeout",
                "message": f"the request body did not arrive (nothing for "
                           f"{BODY_READ_SECONDS:g} s)",
            }
    finally:
        for sock in stalled:
            sock.close()
    assert json.loads(_get(f"{base}/api/v1/holds", token)[1])["holds"] == []
