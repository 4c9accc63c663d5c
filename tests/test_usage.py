"""Usage from the edge, end to end: traffic with several keys through a real Envoy (the wasm
filter, or the native module under KEYGATE_FRONTEND=native) that syncs from a real
keygatectl and reports usage every second; `keygatectl key list` then shows each used key's
last use, and the usage API its exact counts. Between Envoy and keygatectl sits a relay that
loses keygatectl's answer to a usage report after keygatectl stored it, so the fetcher sends
the same report again: keygatectl answers it as a duplicate and counts nothing twice."""

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import harness
from ctl import Keygatectl
from test_lifecycle import wait_for

USAGE_INTERVAL_MS = 1000
# Generous: each step takes about one report period (1 s); the deadline only bounds a failure.
DEADLINE_S = 30


class AnswerLosingRelay(ThreadingHTTPServer):
    """Forwards every call to keygatectl. For the first `lose` usage reports, keygatectl's
    answer is thrown away and the connection cut, as a network fault after the write would.
    Records (report_id, keygatectl's status, keygatectl's body, answer delivered) per report."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target_port, lose=1):
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.target_port = target_port
        self.lose = lose
        self.reports = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def close(self):
        self.shutdown()
        self.server_close()


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self, method):
        body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "content-length")}
        # Long enough for a key-map watch keygatectl holds open.
        conn = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=120)
        try:
            conn.request(method, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            answer = r.read()
            return r.status, r.getheaders(), answer, body
        finally:
            conn.close()

    def do_GET(self):
        status, headers, answer, _ = self._forward("GET")
        self._answer(status, headers, answer)

    def do_POST(self):
        status, headers, answer, body = self._forward("POST")
        if self.path != "/v1/usage":
            self._answer(status, headers, answer)
            return
        server = self.server
        with server.lock:
            lose = server.lose > 0 and status in (200, 204)
            if lose:
                server.lose -= 1
            report_id = json.loads(body).get("report_id")
            server.reports.append((report_id, status, answer, not lose))
        if lose:
            # keygatectl has the report; the fetcher never hears so.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(status, headers, answer)

    def _answer(self, status, headers, answer):
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start_envoy(upstream, keymap_port, sync_token):
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: keymap_port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": 500, "timeout_ms": 2000, "bearer_token": sync_token,
                    "usage_interval_ms": USAGE_INTERVAL_MS})
    harness.set_service_config(config, service)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


@pytest.fixture
def stack(request, upstream):
    ctl = Keygatectl().start()
    request.addfinalizer(ctl.stop)
    relay = AnswerLosingRelay(ctl.port, lose=1)
    request.addfinalizer(relay.close)
    envoy = start_envoy(upstream, relay.port, ctl.sync_token)
    request.addfinalizer(envoy.stop)
    return ctl, relay, envoy


class Traffic:
    """Requests through Envoy, tallied per key as keygate counts them: 200 allowed, 403
    refused after the key was identified; 401 (the key not in the map yet) and 503 (no map
    yet) not counted."""

    def __init__(self, envoy):
        self.client = httpx.Client(base_url=envoy.url, timeout=5)
        self.tally = {}

    def send(self, key_id, key, path="/v3/devices"):
        r = self.client.get(path, headers={"authorization": f"token {key}"})
        status = r.status_code
        # 503 only before the first map arrived (not counted: no key was identified).
        assert status in (200, 401, 403) or (
            status == 503 and r.json()["error"]["code"] == "key_map_unavailable"), (status, r.text)
        counts = self.tally.setdefault(key_id, {"allowed": 0, "refused": 0})
        if status == 200:
            counts["allowed"] += 1
        elif status == 403:
            counts["refused"] += 1
        return status

    def close(self):
        self.client.close()


def test_several_keys_show_last_use_and_exact_counts_and_a_retried_report_counts_once(stack):
    ctl, relay, envoy = stack
    account, keys = ctl.create_account()
    started = int(time.time())
    traffic = Traffic(envoy)
    try:
        sk_test, sk_prod, pk_test = keys["sk_test"], keys["sk_production"], keys["pk_test"]
        wait_for(lambda: traffic.send(sk_test["key_id"], sk_test["key"]) == 200, timeout=DEADLINE_S)
        # Several keys, different counts: two allowed, one refused (a publishable key may not
        # list), one never used.
        for i in range(40):
            traffic.send(sk_test["key_id"], sk_test["key"])
            if i % 2 == 0:
                traffic.send(sk_prod["key_id"], sk_prod["key"])
            if i % 4 == 0:
                assert traffic.send(pk_test["key_id"], pk_test["key"]) == 403
        # An unknown key: no key id, nothing to count.
        assert traffic.send("unknown", "sk_test_" + "x" * 24) == 401
    finally:
        traffic.close()
    want = {k: v for k, v in traffic.tally.items() if k != "unknown"}
    assert want[sk_prod["key_id"]]["allowed"] == 20 and want[pk_test["key_id"]]["refused"] == 10

    # The first report keygatectl stored lost its answer; the fetcher sent it again with the
    # same id, and keygatectl answered that it already had it.
    def resent_as_duplicate():
        with relay.lock:
            reports = list(relay.reports)
        lost = [rid for rid, status, _, delivered in reports if status == 204 and not delivered]
        return bool(lost) and any(
            rid == lost[0] and status == 200 and json.loads(body) == {"duplicate": True}
            for rid, status, body, _ in reports)
    wait_for(resent_as_duplicate, timeout=DEADLINE_S)

    def counted():
        usage = ctl.api("GET", f"/v1/accounts/{account}/usage?days=1")
        return {k["key_id"]: {"allowed": k["allowed"], "refused": k["refused"]}
                for k in usage["keys"] if k["allowed"] or k["refused"]}
    # Counts only grow, so once equal (after the resend) nothing was counted twice.
    wait_for(lambda: counted() == want, timeout=DEADLINE_S)

    listed = {k["key_id"]: k for k in ctl.cli("key", "list", "--account", account)["keys"]}
    for key_id in want:
        last_used = listed[key_id]["last_used_at"]
        assert last_used is not None, key_id
        # Minute precision: within the minute the traffic started and now.
        assert started - started % 60 <= last_used <= time.time(), (key_id, last_used, started)
    assert listed[keys["pk_production"]["key_id"]]["last_used_at"] is None
    # The table a person reads.
    table = ctl.cli_text("key", "list", "--account", account)
    header, *rows = table.splitlines()
    assert "LAST USED" in header
    by_id = {row.split()[0]: row for row in rows}
    assert "never" in by_id[keys["pk_production"]["key_id"]]
    assert "never" not in by_id[sk_test["key_id"]]

    # Later reports keep the totals exact: more traffic adds exactly what was sent.
    with httpx.Client(base_url=envoy.url, timeout=5) as client:
        for _ in range(5):
            assert client.get("/v3/devices", headers={"authorization": f"token {sk_prod['key']}"}).status_code == 200
    want[sk_prod["key_id"]]["allowed"] += 5
    wait_for(lambda: counted() == want, timeout=DEADLINE_S)
    with relay.lock:
        ids = [rid for rid, status, _, _ in relay.reports if status == 204]
    assert len(ids) == len(set(ids)), "keygatectl stored a report id twice"
