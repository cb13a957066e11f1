"""`archivist demo` as a user runs it: started twice, stopped with Ctrl-C while it is busy."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_server_process import _archivist, _free_port, _get, _wait_healthy

pytestmark = pytest.mark.slow


def _hammer(url: str, stop: threading.Event) -> None:
    """Request `url` on fresh connections until told to stop (or the server is gone)."""
    while not stop.is_set():
        try:
            urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            time.sleep(0.01)


def _start_and_interrupt(config_path: Path) -> str:
    """Run the demo until it serves, press Ctrl-C while requests pour in; return its token."""
    port = _free_port()
    process = subprocess.Popen(
        _archivist("demo", "--records", "300", "--port", str(port), "--config", str(config_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    stop = threading.Event()
    hammers = [
        threading.Thread(target=_hammer, args=(f"http://127.0.0.1:{port}/healthz", stop))
        for _ in range(16)
    ]
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
        assert _get(f"{base}/api/v1/stats", token)[0] == 200
        for thread in hammers:
            thread.start()
        time.sleep(0.3)
        # Ctrl-C in a terminal: SIGINT to every process of the group (gunicorn's arbiter, its
        # workers, the archive worker).
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=25)
        assert time.monotonic() - started < 15
        assert process.returncode == 0
    finally:
        stop.set()
        for thread in hammers:
            if thread.is_alive():
                thread.join(timeout=10)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    leftovers = subprocess.run(
        ["pgrep", "-g", str(process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], "processes of the demo outlived it"
    return token


def test_demo_stops_cleanly_on_ctrl_c_and_reuses_its_admin_token(config_path: Path) -> None:
    first = _start_and_interrupt(config_path)
    second = _start_and_interrupt(config_path)
    assert first != second
    listed = subprocess.run(
        _archivist("token", "list", "--config", str(config_path)),
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    demo_tokens = [line for line in listed if line.startswith("demo-admin")]
    assert len(demo_tokens) == 1 and demo_tokens[0].split("\t")[:2] == ["demo-admin", "admin"]
    assert "revoked" not in demo_tokens[0]
