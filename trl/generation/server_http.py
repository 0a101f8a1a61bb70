"""The HTTP layer of `trl vllm-serve` (standard library `http.server`, one thread per connection): time-limited
reading, access checks before the body is read, size-limited bodies, and a cap on concurrent connections. What each
endpoint does is [`~trl.generation.server_app.ServerApp`]'s business."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from trl.generation.server_engines import EndpointNotFound, RequestError
from trl.generation.server_guard import DeadlineSocketIO, HTTPFailure, read_body


if TYPE_CHECKING:
    from trl.generation.server_app import ServerApp

logger = logging.getLogger("trl.vllm_serve")

_DRAIN_BYTES = 64 * 2**20  # at most this much of a refused body is read (and dropped) before closing
_DRAIN_SECONDS = 2.0


def _refuse_constant(name: str):
    raise RequestError(f"The body holds `{name}`, which is not JSON: send finite numbers.")


def parse_json_body(raw: bytes) -> Any:
    """
    The JSON value of a request body (`{}` when empty).

    Args:
        raw (`bytes`):
            The body.

    Raises:
            RequestError: For a body that is not UTF-8 JSON, nests too deeply, or holds NaN or infinities (400).
    """
    if not raw:
        return {}
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(f"The request body is not valid JSON: {error}.") from None
    except RecursionError:
        raise RequestError("The request body nests too deeply to be parsed.") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "trl-vllm-serve"

    def setup(self) -> None:
        super().setup()
        self.read_deadline = time.monotonic() + self.server.app.policy.read_timeout
        # Every read of the request line, headers and body waits at most until `read_deadline` (slow clients).
        plain, self.rfile = self.rfile, io.BufferedReader(DeadlineSocketIO(self.connection, self))
        plain.close()

    def handle_one_request(self) -> None:
        self.read_deadline = time.monotonic() + self.server.app.policy.read_timeout
        super().handle_one_request()

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        app = self.server.app
        asked = urlsplit(self.path).path
        path = asked.rstrip("/") or "/"
        headers, close = {}, False
        try:
            app.policy.authorize(self.headers, self.client_address[0], path)
            app.route(method, asked)
            raw = read_body(self.rfile, self.headers, app.policy.body_limit(path), app.policy.limit_flag(path))
            status, answer = 200, app.dispatch(method, asked, parse_json_body(raw))
        except HTTPFailure as error:
            status, answer = error.status, {"detail": str(error), **error.extra}
            headers, close = error.headers, error.close
        except EndpointNotFound as error:
            status, answer, close = 404, {"detail": str(error)}, True
        except RequestError as error:
            status, answer = 400, {"detail": str(error)}
        except Exception as error:
            logger.exception("%s %s failed", method, path)
            status, answer = 500, {"detail": f"{type(error).__name__}: {error}"}
        self._send(status, answer, headers, close)

    def _send(self, status: int, answer: Any, headers: dict, close: bool) -> None:
        data = json.dumps(answer, allow_nan=False).encode()
        self.connection.settimeout(self.server.app.policy.read_timeout)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        if close and status in (401, 403, 404, 411, 413):
            self._drain()

    def _drain(self) -> None:
        # The body was refused unread: read and drop a bounded part of it so that a client still sending gets the
        # answer instead of a broken pipe (a lingering close).
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + _DRAIN_SECONDS, _DRAIN_BYTES
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server signature)
        logger.debug("%s - %s", self.address_string(), format % args)


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
_BUSY_BODY = b'{"detail": "Too many connections: the server is at its `--max_connections`; retry shortly."}'
_BUSY += b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)


class TrlHTTPServer(ThreadingHTTPServer):
    """
    A threading HTTP server bound to a [`ServerApp`] (health checks are answered while a request generates);
    connections beyond the policy's `max_connections` are answered 503 and closed.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: ServerApp):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.policy.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
