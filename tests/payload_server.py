"""A real HTTP server on 127.0.0.1 for download tests: serves one payload, honours
`Range: bytes=N-`, and can cut, stall, ignore ranges or answer with an error status."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 100_000


@dataclass
class Behaviour:
    """What the server does; tests switch these on. Each cut or stall happens on one request."""

    cuts_left: int = 0  # close the connection after `cut_after` body bytes, this many times
    cut_after: int = CUT
    stalls_left: int = 0  # send `cut_after` bytes, then go silent for `stall_s`, then close
    stall_s: float = 0.0
    ignore_range: bool = False
    status: int | None = None  # answer every request with this error status
    ranges: list[str | None] = field(default_factory=list)  # the Range header of each request
    agents: list[str | None] = field(default_factory=list)


class PayloadHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring `Range: bytes=N-` unless told not to."""

    server: PayloadServer

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        range_header = self.headers.get("Range")
        behaviour.ranges.append(range_header)
        behaviour.agents.append(self.headers.get("User-Agent"))
        if behaviour.status is not None:
            self.send_error(behaviour.status)
            return
        if self.path.startswith("/redirect/"):  # as GitHub release links do, to their storage host
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if range_header and not behaviour.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour.cuts_left:
            behaviour.cuts_left -= 1
            self.wfile.write(body[: behaviour.cut_after])
            return  # HTTP/1.0: returning closes the connection, short of Content-Length
        if behaviour.stalls_left:
            behaviour.stalls_left -= 1
            self.wfile.write(body[: behaviour.cut_after])
            self.wfile.flush()
            time.sleep(behaviour.stall_s)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class PayloadServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PayloadHandler)
        self.behaviour = Behaviour()

    def url(self, name: str = "weights.bin") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/releases/{name}"

    def __enter__(self) -> "PayloadServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
