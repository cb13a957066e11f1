"""Running the app on waitress, alone (`archivist serve`) or with a worker (`archivist demo`)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from waitress import create_server

from archivist.config import Config
from server import close_app, create_app

log = logging.getLogger(__name__)


def serve(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API on waitress until SIGTERM or Ctrl-C, then flush the audit log and close.

    :param on_ready: called with the base URL once the socket listens.
    """
    app = create_app(config)
    server = create_server(
        app,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        threads=config.server.threads,
        ident="archivist",
        channel_timeout=120,
        # the whole request body is capped by the app's MAX_CONTENT_LENGTH as well
        max_request_body_size=config.server.max_request_bytes,
        # a streamed export waits for a slow client instead of piling up to 16 MB per response
        outbuf_high_watermark=2**20,
    )
    url = f"http://{server.effective_host}:{server.effective_port}"  # type: ignore[union-attr]
    try:
        with _sigterm_as_exit():
            log.info("serving on %s with %d threads", url, config.server.threads)
            if on_ready is not None:
                on_ready(url)
            server.run()  # returns after KeyboardInterrupt or SystemExit
    finally:
        server.close()
        close_app(app)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def run_worker_process(config_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `archivist worker` as a child process for the duration of the block."""
    child = subprocess.Popen(
        [sys.executable, "-m", "archivist", "worker", "--config", str(config_path)]
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()  # the worker finishes its batch on SIGTERM, then exits
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop within 60 s; killing it")
                child.kill()
                child.wait()
