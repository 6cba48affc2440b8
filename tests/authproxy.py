"""A logged-in browser for headless Chromium: a loopback HTTP proxy that adds basic auth.

A person's browser answers MLflow's basic-auth challenge once and then sends the
Authorization header with every request to the server. Headless Chromium cannot answer
the dialog (and does not reuse credentials given in the URL for the app's own API
requests), so the tests point it at this proxy, which forwards every request to the real
server with the header added. Nothing is stubbed: every answer is the server's.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "accept-encoding",
               "proxy-connection", "te", "upgrade", "authorization"}


@contextlib.contextmanager
def basic_auth_proxy(target: str, username: str, password: str) -> Iterator[str]:
    """Yields http://127.0.0.1:<port>, which forwards to target with the credentials."""
    header = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    target = target.rstrip("/")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            request = urllib.request.Request(target + self.path, data=body, method=self.command)
            for key, value in self.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    request.add_header(key, value)
            request.add_header("Authorization", header)
            try:
                response = urllib.request.urlopen(request, timeout=60)
            except urllib.error.HTTPError as e:
                response = e
            with response:
                data = response.read()
                self.send_response(response.status)
                for key, value in response.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
