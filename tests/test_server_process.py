"""`archivist serve` and `archivist demo` as real processes, driven over real HTTP."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import archivist

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _archivist(*args: str) -> list[str]:
    return [sys.executable, "-m", "archivist", *args]


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def _wait_healthy(base: str, process: subprocess.Popen[Any], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            if _get(f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become healthy")


@pytest.fixture
def served(
    services: Any,
    config_path: Path,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> Iterator[tuple[str, str]]:
    yield from _serve(config_path, archived, make_record)


@pytest.fixture
def served_by_one_process(
    services: Any,
    config_path: Path,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> Iterator[tuple[str, str]]:
    with config_path.open("a") as f:
        f.write("\n[server]\nprocesses = 1\n")
    yield from _serve(config_path, archived, make_record)


def _serve(
    config_path: Path, archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]]
) -> Iterator[tuple[str, str]]:
    """Archive two records, create an admin token, run `archivist serve`; yield URL and token."""
    archived(
        make_record(id="P-1", body="refund for the broken kettle"),
        make_record(id="P-2", body="退款 申请", created_at="2021-06-01T00:00:00Z"),
    )
    token = subprocess.run(
        _archivist(
            "token", "create", "--role", "admin", "--name", "ops", "--config", str(config_path)
        ),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = _free_port()
    log = config_path.parent / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            _archivist("serve", "--port", str(port), "--config", str(config_path)),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process)
        yield base, token
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.returncode == 0, log.read_text()


def test_serve_drives_search_record_restore_export_over_http(served: tuple[str, str]) -> None:
    base, token = served
    status, body, _ = _get(f"{base}/api/v1/search?q=kettle", token)
    assert status == 200
    assert [h["id"] for h in json.loads(body)["hits"]] == ["P-1"]

    status, body, _ = _get(f"{base}/api/v1/records/P-2", token)
    assert status == 200 and json.loads(body)["record"]["body"] == "退款 申请"

    status, body, headers = _get(f"{base}/api/v1/export.csv?from=2021-01-01", token)
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    assert "archivist-export_2021-01-01_all.csv" in headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
    assert [r["id"] for r in rows] == ["P-2"]

    status, body, _ = _get(f"{base}/api/v1/records/P-1/restore", token, method="POST")
    assert (status, json.loads(body)) == (
        200, {"id": "P-1", "state": "restored", "restored": ["P-1"]}
    )
    status, body, _ = _get(f"{base}/api/v1/records/P-1/restore", token, method="POST")
    assert status == 409
    status, body, _ = _get(f"{base}/api/v1/search?q=kettle", token)
    assert json.loads(body)["total"] == 0

    assert _get(f"{base}/api/v1/search?q=kettle")[0] == 401
    assert _get(f"{base}/api/v1/search?per_page=1000", token)[0] == 400
    status, body, _ = _get(f"{base}/api/v1/audit?action=restore", token)
    assert [e["outcome"] for e in json.loads(body)["entries"]] == ["not_archived", "ok"]


def test_a_restore_is_answered_while_slow_clients_hold_requests_open(
    served_by_one_process: tuple[str, str],
) -> None:
    # Gunicorn gives each request a thread, in arrival order, and a client still sending its
    # request holds one. The 40 unfinished requests here take 40 of the process's threads;
    # the restore must still get one rather than wait behind them.
    base, token = served_by_one_process
    port = int(base.rsplit(":", 1)[1])
    slow: list[socket.socket] = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /api/v1/search?q=kettle HTTP/1.1\r\nHost: archivist\r\n")
            slow.append(sock)
        time.sleep(1)  # until the server has picked them up
        status, body, _ = _get(f"{base}/api/v1/records/P-1/restore", token, method="POST")
        assert (status, json.loads(body)["state"]) == (200, "restored")
    finally:
        for sock in slow:
            sock.close()


def test_demo_serves_with_a_worker_until_interrupted(tmp_path: Path, config_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        _archivist("demo", "--records", "300", "--port", str(port), "--config", str(config_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        token = None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "the demo exited early"
            if line.startswith("admin token: "):
                token = line.split(": ", 1)[1].strip()
        assert token is not None
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, process)
        status, body, _ = _get(f"{base}/api/v1/stats", token)
        assert status == 200 and json.loads(body)["archived"] > 0
        status, body, _ = _get(f"{base}/api/v1/search?q=refund", token)
        assert status == 200
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "the worker child process is not running"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_serve_on_a_port_already_taken_says_so_in_one_line(config_path: Path) -> None:
    assert archivist("init", "--config", str(config_path)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = archivist("serve", "--host", "127.0.0.1", "--port", str(port),
                           "--config", str(config_path))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_serve_and_worker_refuse_an_index_they_cannot_open_and_an_empty_host_in_one_line(
    config_path: Path, tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    """An index folder not mounted: one line and exit 1 before any worker starts (the workers
    failed to boot, each with a traceback, and requests went unanswered); an empty `--host`
    would listen on every interface."""
    from tests.conftest import write_jsonl

    assert archivist("init", "--config", str(config_path)).returncode == 0
    records = write_jsonl(tmp_path / "in.jsonl", [make_record(id="S-1")])
    assert archivist("import", str(records), "--config", str(config_path)).returncode == 0
    assert archivist("archive", "--config", str(config_path)).returncode == 0
    config_path.write_text(config_path.read_text().replace('dir = "data/index"',
                                                           'dir = "data/not-mounted"'))

    result = archivist("serve", "--port", "0", "--config", str(config_path))

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: there is no index in "), lines
    assert "Traceback" not in result.stderr and result.stdout == ""
    worker = archivist("worker", "--config", str(config_path))  # stops at start the same way
    assert worker.returncode == 1 and worker.stderr.startswith("error: there is no index in ")
    empty = archivist("serve", "--host", "", "--port", "0", "--config", str(config_path))
    assert empty.returncode == 2 and "--host" in empty.stderr and "empty" in empty.stderr


def test_serve_listens_on_an_ipv6_address_given_with_or_without_brackets(
    config_path: Path,
) -> None:
    assert archivist("init", "--config", str(config_path)).returncode == 0
    for host in ("::1", "[::1]"):
        port = _free_port()
        with subprocess.Popen(
            _archivist("serve", "--host", host, "--port", str(port), "--config",
                       str(config_path)),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        ) as process:
            try:
                assert process.stdout is not None
                said = process.stdout.readline().decode().strip()
                assert said == f"serving on http://[::1]:{port}"
                _wait_healthy(f"http://[::1]:{port}", process)
            finally:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0
