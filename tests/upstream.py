"""A demo/test upstream: answers every request with JSON describing what it received, and
remembers each request so tests can assert what got through Envoy (and what never did)."""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address):
        super().__init__(address, Handler)
        self.lock = threading.Lock()
        self.requests = []

    def record(self, entry):
        with self.lock:
            self.requests.append(entry)

    def handle_error(self, request, client_address):
        # A client (Envoy) that goes away mid-request is not the upstream's error to print:
        # tests that kill Envoy read the output for tracebacks of their own.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def take(self):
        with self.lock:
            taken, self.requests = self.requests, []
            return taken


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each answer into one write: headers and body in separate packets meet
    # Nagle and delayed ACKs, 40 ms a request.
    wbufsize = 1 << 16

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
        }
        self.server.record(entry)
        body = json.dumps({"upstream": "ok", **entry}).encode()
        self.send_response(200)
        # A test asks for a header on the answer by `x-test-answer-header: name: value`.
        for asked in self.headers.get_all("x-test-answer-header") or []:
            name, _, value = asked.partition(":")
            self.send_header(name.strip(), value.strip())
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, *args):
        pass


def start(port=0):
    server = RecordingServer(("127.0.0.1", port))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = RecordingServer(("127.0.0.1", args.port))
    print(f"demo upstream on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
