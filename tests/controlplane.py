"""A scripted stand-in for keygatectl's key-map endpoint, for fault tests: it answers what
the test tells it to (garbage, old versions, hangs, errors) and records every poll. The
lifecycle tests use the real keygatectl instead."""

import json
import struct
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
        self.answered = []  # (path, status) of every answer, in order
        self.poll_times = []  # time.monotonic() of each poll, in order
        # Headers sent with the next answer only (e.g. the fault build's trap), then cleared.
        self.headers_once = {}
        self.version = 0
        self.entries = {}
        self.override = None  # (status, body bytes, content type) answered instead of the map
        self.store = None  # the keygate-store header sent with every answer, if set
        self.reports = []  # usage reports received: (report_id, keys, the status answered)
        self.report_statuses = []  # statuses to answer the next reports with (then 204)
        self.report_times = []  # time.monotonic() of each report, in order
        self.report_auth = set()  # the authorization headers reports came with
        self.hang = False
        self.down = False  # drop every request without an answer, as a dead server would
        # Refuse `wait` with 400, as a keygatectl from before watches (unknown parameter).
        self.refuse_watch = False
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def publish(self, entries, version=None, store=None):
        """Serve `entries` (key-map entries) as the next version's full map (from store
        `store`, when given, from now on)."""
        with self.lock:
            self.version = version if version is not None else self.version + 1
            if store is not None:
                self.store = store
            self.entries = {e["digest"]: e for e in entries}
            self.override = None
            return self.version

    def answer(self, status, body, content_type="application/json", store=None):
        """Answer every poll with this (until the next `publish`); `store` sets the
        keygate-store header from now on."""
        with self.lock:
            self.override = (status, body if isinstance(body, bytes) else body.encode(),
                             content_type)
            if store is not None:
                self.store = store

    def full_body(self):
        return json.dumps(
            {"kind": "full", "version": self.version, "keys": list(self.entries.values())}
        ).encode()

    def usage_by_key(self):
        """Each key id's counts over the reports stored (each report id counted once, as
        keygatectl counts them)."""
        totals, seen = {}, set()
        with self.lock:
            for report_id, keys, status in self.reports:
                if status not in (200, 204) or report_id in seen:
                    continue
                seen.add(report_id)
                for k in keys:
                    t = totals.setdefault(k["key_id"], {"allowed": 0, "refused": 0})
                    t["allowed"] += k["allowed"]
                    t["refused"] += k["refused"]
        return totals

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
            server.poll_times.append(time.monotonic())
            override, version, body = server.override, server.version, server.full_body()
            store = server.store
            once, server.headers_once = server.headers_once, {}
        if server.hang:
            time.sleep(30)
            return
        if server.down:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        content_type = "application/json"
        etag = f'"{store}:{version}"' if store else f'"{version}"'
        if server.refuse_watch and "wait=" in self.path:
            status, body = 400, b'{"error":{"code":"invalid_request","message":"query: unknown field `wait`"}}'
        elif override:
            status, body, content_type = override
        elif self.headers.get("if-none-match") == etag:
            status, body = 304, b""
        else:
            status = 200
        with server.lock:
            server.answered.append((self.path, status))
        self.send_response(status)
        self.send_header("etag", etag)
        self.send_header("content-type", content_type)
        if store:
            self.send_header("keygate-store", store)
        for name, value in once.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        if self.path != "/v1/usage":
            status = 404
        else:
            report = json.loads(body)
            with server.lock:
                status = server.report_statuses.pop(0) if server.report_statuses else 204
                server.reports.append((report["report_id"], report["keys"], status))
                server.report_times.append(time.monotonic())
                server.report_auth.add(self.headers.get("authorization"))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def binary_map(version, entries):
    """keygatectl's binary full map of `entries` (application/x-keygate-map): magic, version
    (u64 LE), count (u32 LE), then each entry by digest, in the bucket encoding."""
    limited = any(e.get("rate_limit") for e in entries)
    out = bytearray(b"KGMAP02\n" if limited else b"KGMAP01\n")
    out += struct.pack("<QI", version, len(entries))
    for e in sorted(entries, key=lambda e: e["digest"]):
        out += encode_entry(e)
    return bytes(out)


def encode_entry(e, account_id=None):
    flags = (1 if e["type"] == "publishable" else 0) | (2 if e["environment"] == "production" else 0)
    flags |= 4 if e.get("disabled") else 0
    flags |= 8 if e.get("expires_at") is not None else 0
    limit = e.get("rate_limit")
    flags |= 16 if limit else 0
    out = bytearray(bytes.fromhex(e["digest"]))
    out.append(flags)
    if e.get("expires_at") is not None:
        out += struct.pack("<Q", e["expires_at"])
    if limit:
        period = {"second": 0, "minute": 1}[limit["per"]]
        out += struct.pack("<IIB", limit["requests"], limit.get("burst", limit["requests"]), period)
    account = account_id if account_id is not None else e["account_id"].encode()
    for field in (account, e["key_id"].encode()):
        out.append(len(field))
        out += field
    return bytes(out)


def entries_for(keyset):
    return list(keyset.entries)


__all__ = ["ScriptedControlPlane", "keylib"]
