"""A scripted stand-in for keygatectl's key-map endpoint, for fault tests: it answers what
the test tells it to (garbage, old versions, hangs, errors) and records every poll. The
lifecycle tests use the real keygatectl instead."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keys as keylib


class ScriptedControlPlane(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.polls = []
        self.version = 0
        self.entries = {}
        self.override = None  # (status, body bytes) answered instead of the map
        self.hang = False
        self.down = False  # drop every request without an answer, as a dead server would
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def publish(self, entries, version=None):
        """Serve `entries` (key-map entries) as the next version's full map."""
        with self.lock:
            self.version = version if version is not None else self.version + 1
            self.entries = {e["digest"]: e for e in entries}
            self.override = None
            return self.version

    def answer(self, status, body):
        with self.lock:
            self.override = (status, body if isinstance(body, bytes) else body.encode())

    def full_body(self):
        return json.dumps(
            {"kind": "full", "version": self.version, "keys": list(self.entries.values())}
        ).encode()

    def close(self):
        self.hang = False
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each answer into one write: headers and body in separate packets meet
    # Nagle and delayed ACKs, 40 ms a request.
    wbufsize = 1 << 16

    def do_GET(self):
        server = self.server
        with server.lock:
            server.polls.append((self.path, self.headers.get("if-none-match")))
            override, version, body = server.override, server.version, server.full_body()
        if server.hang:
            time.sleep(30)
            return
        if server.down:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if override:
            status, body = override
        elif self.headers.get("if-none-match") == f'"{version}"':
            status, body = 304, b""
        else:
            status = 200
        self.send_response(status)
        self.send_header("etag", f'"{version}"')
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def entries_for(keyset):
    return list(keyset.entries)


__all__ = ["ScriptedControlPlane", "keylib"]
