"""Running the app on gunicorn, alone (`archivist serve`) or with a worker (`archivist demo`).

Gunicorn forks `server.processes` worker processes with `server.threads` threads each. A search
is Python that holds the GIL, so one process uses one core at most: on 2 cores, two processes
answer about twice as many searches as one. Each process opens its own services (database, store,
index) after the fork.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from archivist.active_db import create_schema, make_engine
from archivist.config import Config
from archivist.errors import ArchivistError
from indexer.services import Services
from server import close_app, create_app
from server.http_worker import ArchivistWorker

log = logging.getLogger(__name__)


class CannotListen(ArchivistError):
    """The address to serve on is taken, or not this machine's."""

    code = "cannot_listen"


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """Gunicorn configured from code: each worker process builds its own app."""

    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self._config = config
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return worker_app(self._config)


def worker_app(config: Config) -> Flask:
    """The app of one server process, its index warmed up and kept fresh (a damaged index
    still gives an app: searches answer 503 with the reason, restores go on)."""
    app = create_app(config)
    index = app.extensions["archivist"].index
    index.prepare_deletes()  # before the first restore
    index.keep_fresh()
    return app


def serve(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API until SIGTERM or Ctrl-C; each worker flushes its audit log and closes.

    :param on_ready: called with the base URL once the socket listens.
    """
    # A missing or wrong archive key stops the server here, with one line, rather than as a
    # 500 on every request; so do an index that cannot be opened (a volume not mounted) and
    # an address it cannot listen on.
    with Services.open(config) as services:
        services.index  # noqa: B018 (opening it is the check)
    host = host or config.server.host
    port = config.server.port if port is None else port
    check_can_listen(host, port)
    # Once, before the fork, so that worker processes never race to create tables.
    engine = make_engine(config.active_url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()

    def when_ready(arbiter: Any) -> None:
        address = arbiter.LISTENERS[0].sock.getsockname()
        url = f"http://{bind_address(address[0], address[1])}"
        log.info(
            "serving on %s with %d processes of %d threads",
            url, config.server.processes, config.server.threads,
        )
        if on_ready is not None:
            on_ready(url)

    def worker_exit(arbiter: Any, worker: Any) -> None:
        app = getattr(worker, "wsgi", None)
        if isinstance(app, Flask):
            close_app(app)

    options: dict[str, Any] = {
        "bind": bind_address(host, port),
        "workers": config.server.processes,
        # gthread, reading request heads without a thread and under a deadline (slow clients)
        "worker_class": ArchivistWorker,
        "threads": config.server.threads,
        "proc_name": "archivist",
        # a streamed export writes straight to the socket, so a slow client only slows itself
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 5,
        # no limit on the request line: the app answers an over-long query with a JSON 400
        "limit_request_line": 0,
        "control_socket_disable": True,  # one per user by default: two servers would collide
        "errorlog": "-",
        "loglevel": "info",
        "when_ready": when_ready,
        "worker_exit": worker_exit,
    }
    _Gunicorn(config, options).run()  # returns by SystemExit after SIGTERM or Ctrl-C


def check_can_listen(host: str, port: int) -> None:
    """Raise `CannotListen` if the address is taken or not this machine's: gunicorn would
    retry for seconds, then stop with a dozen log lines and no reason a script can read.

    The probe binds as gunicorn will: IPv6 for an IPv6 address (`[::]`, `::1`), else IPv4
    (a host name too), with `SO_REUSEADDR`.

    :param host: the address to listen on (`""`: every interface)
    :param port: its port (0: any free one, always possible)
    """
    bare = _unbracketed(host)
    family = socket.AF_INET6 if _is_ipv6(bare) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((bare, port))
    except OSError as e:  # (socket.gaierror included: a host name that does not resolve)
        raise CannotListen(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def bind_address(host: str, port: int) -> str:
    """gunicorn's `bind` for an address: an IPv6 one in brackets (`::` as `[::]:8080`).

    :param host: the address, with or without brackets
    :param port: its port
    """
    bare = _unbracketed(host)
    return f"[{bare}]:{port}" if _is_ipv6(bare) else f"{bare}:{port}"


def _unbracketed(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:  # a host name, or "" for every interface
        return False


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
