"""The gunicorn worker of `archivist serve`: gunicorn's threaded worker, hardened for the open web.

Gunicorn's `gthread` worker gives a connection a thread as soon as its first bytes arrive, and
the thread then waits, without a time limit, for the rest of the request. A few hundred clients
that send half a request (by accident or on purpose) hold every thread, and nothing else is
answered for as long as they stay connected. Here the request head (request line and headers) is
read in the worker's event loop instead, like a reverse proxy would: a connection gets a thread
only once its head is complete (and its body, up to `MAX_BUFFERED_BODY` bytes), and one whose
head is not complete within `HEAD_SECONDS` (its body within `BODY_SECONDS` more) is answered
`408` and closed. A larger or chunked body is read by the thread, each read waiting
`BODY_READ_SECONDS` at most.

Errors that gunicorn answers itself (a bad request line, headers too large) get the contract's
JSON error body rather than gunicorn's HTML page.
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import TConn, ThreadWorker

from server.errors import ClientTooSlow, code_for_status, error_body, new_request_id

log = logging.getLogger(__name__)

HEAD_SECONDS = 10.0  # to send the request line and every header, from the first byte awaited
BODY_SECONDS = 30.0  # then to send a body of up to MAX_BUFFERED_BODY bytes
BODY_READ_SECONDS = 30.0  # the longest wait for the next piece of a larger or chunked body
MAX_HEAD_BYTES = 1 << 20  # past this, gunicorn's parser sees the head and answers 431 or 414
MAX_BUFFERED_BODY = 1 << 20
_RECV_BYTES = 65536
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d{1,12})[ \t]*\r?$")


class _Conn(TConn):  # type: ignore[misc]
    """A gunicorn connection that remembers the head bytes read for it in the event loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = bytearray()
        self.head_deadline = 0.0
        self.head_end: int | None = None  # where the headers end, once they have
        self.body_length = 0  # the body bytes still read in the event loop (Content-Length)
        self.read_head: bytes | None = None  # a complete head, not yet handed to the parser

    def init(self) -> None:
        """Create the parser (on a new connection) and give it the head read so far."""
        super().init()
        if self.read_head is not None and self.parser is not None:
            self.parser.unreader.unread(self.read_head)
            self.read_head = None
            unreader = self.parser.unreader
            if isinstance(getattr(unreader, "sock", None), socket.socket):
                unreader.sock = _BodyReads(unreader.sock)


class _BodyReads:
    """The socket as the request parser sees it: each read waits `BODY_READ_SECONDS` at most."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        """Read up to `size` bytes; a client silent for too long is `ClientTooSlow` (408)."""
        previous = self._sock.gettimeout()
        if previous is None or previous > BODY_READ_SECONDS:
            self._sock.settimeout(BODY_READ_SECONDS)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            raise ClientTooSlow(
                f"the request body did not arrive (nothing for {BODY_READ_SECONDS:g} s)"
            ) from None
        finally:
            self._sock.settimeout(previous)

    def gettimeout(self) -> float | None:
        """The socket's own timeout (read by gunicorn when it drains an unread body)."""
        return self._sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        """Set the socket's own timeout."""
        self._sock.settimeout(value)


class ArchivistWorker(ThreadWorker):  # type: ignore[misc]
    """`gthread` with request heads read in the event loop, under a deadline; errors as JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads: deque[_Conn] = deque()  # waiting for their head, oldest deadline first

    # --- connections arrive: read their head without a thread ---------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and wait, in the event loop, for its request head."""
        try:
            client, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client, address, listener.getsockname())  # non-blocking now
        self._await_head(conn)

    def on_client_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        """A kept-alive connection sends its next request: read its head like a new one's."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        conn.sock.setblocking(False)
        self._await_head(conn)

    def on_pending_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        """Not used: connections wait for their head here, never in a thread."""
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn: _Conn) -> None:
        conn.head = bytearray()
        conn.head_end = None
        conn.body_length = 0
        conn.head_deadline = time.monotonic() + HEAD_SECONDS
        self._heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: _Conn, _client: Any = None) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before sending a request
            self._forget_head(conn)
            self._close(conn)
            return
        conn.head += data
        if conn.head_end is None:
            end = conn.head.find(b"\r\n\r\n")
            if end < 0 and len(conn.head) <= MAX_HEAD_BYTES:
                return
            conn.head_end = len(conn.head) if end < 0 else end + 4
            conn.body_length = _small_body_length(bytes(conn.head[: conn.head_end]))
            if conn.body_length:  # the body too, before a thread waits for it
                conn.head_deadline = time.monotonic() + BODY_SECONDS
                self._heads.remove(conn)
                self._heads.append(conn)  # keeps the deque in deadline order
        if len(conn.head) >= conn.head_end + conn.body_length:
            self._forget_head(conn)
            conn.read_head = bytes(conn.head)
            conn.head = bytearray()
            if conn.parser is not None:  # a kept-alive connection: its parser exists already
                conn.parser.unreader.unread(conn.read_head)
                conn.read_head = None
            conn.data_ready = True
            self.enqueue_req(conn)

    def _forget_head(self, conn: _Conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self._heads.remove(conn)
        except ValueError:
            pass

    def _close(self, conn: _Conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Gunicorn's sweep of waiting connections, plus the heads past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        dropped = 0
        while self._heads and self._heads[0].head_deadline <= now:
            conn = self._heads.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            if conn.head:  # it started a request: tell it why it is closed
                if conn.head_end is not None and conn.body_length:
                    message = (f"the request body was not complete within {BODY_SECONDS:g} s "
                               "of its head")
                else:
                    message = f"the request was not complete within {HEAD_SECONDS:g} s"
                _send_quietly(conn.sock, _json_response(408, "Request Timeout", message))
            self._close(conn)
            dropped += 1
        if dropped:
            log.warning(
                "closed %d connection(s) that sent no whole request within %g s",
                dropped, HEAD_SECONDS,
            )

    def _cap_keepalive(self, deadline: float) -> None:
        # Called once as the worker stops: connections without a whole request have nothing
        # to finish, so they close now rather than hold the stop for HEAD_SECONDS.
        super()._cap_keepalive(deadline)
        while self._heads:
            conn = self._heads.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self._close(conn)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT or SIGINT (Ctrl-C): stop now, without touching the thread pool's lock.

        gthread's own handler shuts the thread pool down from inside the signal handler. When
        the signal lands while the main thread is handing a request to that pool (holding
        its lock, which is not reentrant), the handler waits for itself: the worker hangs
        until the arbiter kills it after the graceful timeout. Exiting is enough: the pool's
        idle threads end with the process.
        """
        Worker.handle_quit(self, sig, frame)

    # --- errors gunicorn answers itself -----------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Gunicorn's own answer (status, logging), sent as the contract's JSON error."""
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)
        status, reason = capture.status()
        if status is None:
            return
        message = f"{reason}: {exc}" if str(exc) and status < 500 else reason
        _send_quietly(client, _json_response(status, reason, message))


class _Capture:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def status(self) -> tuple[int | None, str]:
        line = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return None, ""
        return int(parts[1]), parts[2] if len(parts) > 2 else ""


def _small_body_length(head: bytes) -> int:
    """The Content-Length of a request head, when the body is small enough to buffer, else 0."""
    match = _CONTENT_LENGTH.search(head)
    if match is None or b"transfer-encoding" in head.lower():
        return 0
    length = int(match.group(1))
    return length if length <= MAX_BUFFERED_BODY else 0


def _json_response(status: int, reason: str, message: str) -> bytes:
    """An error answer made here, not by the app: with a request id, as the app's are, logged
    with what it says."""
    body = json.dumps(error_body(code_for_status(status), message)).encode("utf-8")
    rid = new_request_id()
    log.info("request %s: %d %s", rid, status, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {rid}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _send_quietly(sock: Any, data: bytes) -> None:
    """Send a short error answer without blocking; a client that does not read misses it."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass
