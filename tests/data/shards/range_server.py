"""A real HTTP/1.1 file server with byte ranges and scripted faults, for the shard tests.

    python range_server.py ROOT        # prints the port it listens on (127.0.0.1), then serves ROOT

Python's http.server does not answer Range requests, object stores do; this adds single-range support
(`bytes=a-b`, `bytes=a-`, `bytes=-n`, 206 + Content-Range, 416), HEAD, ETag and Last-Modified, keep-alive.
Paths with a prefix misbehave on purpose:

    /stall/N/<path>   sends the headers and N bytes of the body, then goes silent
    /hang/<path>      reads the request and never answers
    /trickle/<path>   sends one byte every 0.2 s
    /norange/<path>   ignores Range (answers 200 with the whole file), like some plain servers
    /flaky/K/<path>   answers 503 to the first K requests for <path>, then serves it
    /nohead/<path>    answers 403 to HEAD (as signed GET URLs do)
    /close/<path>     answers with `Connection: close` (no keep-alive)
    /_stats           JSON: requests per path (GET and HEAD) and "_connections" accepted, for tests that
                      count round trips
"""

from __future__ import annotations

import email.utils
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = "."
COUNTS: dict[str, int] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK
    # (40 ms per request on Linux), which object stores do not do
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # quiet: tests read stdout for the port only
        pass

    def setup(self) -> None:  # one handler per connection: count them (keep-alive tests)
        super().setup()
        with LOCK:
            COUNTS["_connections"] = COUNTS.get("_connections", 0) + 1

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        with LOCK:
            COUNTS[path] = COUNTS.get(path, 0) + 1
            count = COUNTS[path]
        if path == "/_stats":
            return self._send_bytes(json.dumps(COUNTS).encode(), "application/json", head)
        parts = path.lstrip("/").split("/")
        mode, arg = None, None
        if parts[0] in ("stall", "flaky"):
            mode, arg, parts = parts[0], int(parts[1]), parts[2:]
        elif parts[0] in ("hang", "trickle", "norange", "nohead", "close"):
            mode, parts = parts[0], parts[1:]
        if mode == "hang":
            time.sleep(3600)
            return
        if mode == "flaky" and count <= arg:
            return self._error(503, "flaky on purpose")
        if mode == "nohead" and head:
            return self._error(403, "no HEAD here")
        file = os.path.join(ROOT, *parts)
        if not os.path.isfile(file):
            return self._error(404, "not found")
        st = os.stat(file)
        size = st.st_size
        start, end = 0, size - 1
        status = 200
        spec = self.headers.get("Range")
        if spec and mode != "norange":
            parsed = _parse_range(spec, size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if mode == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if head:
            return
        with open(file, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        if mode == "stall":
            self.wfile.write(body[:arg])
            self.wfile.flush()
            time.sleep(3600)
            return
        if mode == "trickle":
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(0.2)
            return
        self.wfile.write(body)

    def _send_bytes(self, body: bytes, kind: str, head: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range, or None when it cannot be satisfied."""
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first, _, last = spec[6:].partition("-")
    if first == "":  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    a = int(first)
    b = size - 1 if last == "" else min(int(last), size - 1)
    return (a, b) if a < size and a <= b else None


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # clients hanging up on purpose are the tests


def main() -> None:
    global ROOT
    ROOT = sys.argv[1]
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
