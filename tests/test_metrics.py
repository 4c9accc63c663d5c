"""Metrics, probes and logs, as an operator's tools read them:

- a real Prometheus scrapes keygatectl's /metrics (with its metrics token) and a real Envoy's
  /stats/prometheus (the example sync config, with each front end), both targets are up
  (Prometheus refuses a malformed exposition), and `promtool check metrics` (Prometheus's
  strict reader and linter) finds nothing in keygatectl's;
- the README's PromQL, as written, runs against that Prometheus, and the denial counter
  carries the reason as a label for the front end of this pass;
- the counters show what happened: key-map answers by kind, sizes, builds, store calls,
  sign-in failures, HTTP requests by route template;
- /livez, /readyz (not ready while PostgreSQL refuses keygatectl, ready again after), and
  --log-format json (every line one JSON event with a level, no secret)."""

import json
import re
import secrets
import time
import urllib.error
import urllib.request

import httpx
import pytest

import harness
import promserver
import test_lifecycle as lifecycle
from ctl import Keygatectl
from pg import Replica, database  # noqa: F401

README = harness.ROOT / "README.md"


def readme_promql():
    """{section heading: [[query line, …] per promql block]} from README.md."""
    blocks, heading, block = {}, None, None
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.strip() == "```promql":
            block = []
        elif line.strip() == "```" and block is not None:
            blocks.setdefault(heading, []).append(block)
            block = None
        elif block is not None and line.strip():
            block.append(line)
    return blocks


def readme_operations():
    """(metric names in the Operations section's table, the series its /metrics sample shows)."""
    text = README.read_text().split("## Operations: metrics, probes, logs, TLS to PostgreSQL", 1)[1]
    text = text.split("\n## ", 1)[0]
    names = set()
    for row in text.splitlines():
        if row.startswith("| `keygatectl_"):
            names.update(re.findall(r"`(keygatectl_\w+)`", row.split("|")[1]))
    sample = re.findall(r"^# (keygatectl_\w+(?:\{[^}]*\})?) \S+$", text, re.M)
    return names, sample


def get(port, path, token=None, host=None):
    headers = {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if host:
        headers["host"] = host
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_prometheus_scrapes_keygatectl_and_envoy_and_the_readme_s_promql_works(
        upstream, stopped_after, tmp_path):
    token = "kgmetrics_" + secrets.token_hex(16)
    token_file = tmp_path / "metrics-token"
    token_file.write_text(token + "\n")
    ctl = stopped_after(Keygatectl().start(extra_args=["--metrics-token-file", str(token_file)]))
    # Watches of one second: each ends in a 304 (counted below) and the next is held at once.
    envoy = stopped_after(lifecycle.start_envoy(upstream, ctl, wait=1))
    account, keys = ctl.create_account()
    key = keys["sk_test"]
    lifecycle.wait_for(lambda: lifecycle.answer(envoy, key["key"]) == (200, None), timeout=15)
    prometheus = promserver.Prometheus({
        "keygatectl": {"target": f"127.0.0.1:{ctl.port}", "token_file": token_file},
        "envoy": {"target": f"127.0.0.1:{envoy.admin_port}", "path": "/stats/prometheus"},
    }).start()
    try:
        # Both targets up (Prometheus parsed both expositions) before the traffic, so that
        # rates see it happen.
        deadline = time.monotonic() + 20
        while set(prometheus.targets().values()) != {("up", "")}:
            assert time.monotonic() < deadline, prometheus.targets()
            time.sleep(0.2)
        prometheus.wait_for(f'{harness.PROMETHEUS}keygate_allowed', lambda r: len(r) == 1)
        # Traffic of each kind: allowed, an unknown key, no key; a roll (a delta for the
        # fetcher); a wrong admin token.
        for _ in range(3):
            assert lifecycle.answer(envoy, key["key"]) == (200, None)
            assert lifecycle.answer(envoy, "sk_test_" + secrets.token_hex(20))[1] == "invalid_api_key"
            assert httpx.get(envoy.url + "/v3/devices", timeout=5).status_code == 401
        new = ctl.api("POST", f"/v1/keys/{key['key_id']}/roll", {})["new_key"]
        lifecycle.wait_for(lambda: lifecycle.answer(envoy, new["key"]) == (200, None), timeout=15)
        status, _, _ = get(ctl.port, "/v1/accounts", token="kgwrong_" + secrets.token_hex(16))
        assert status == 401

        # /metrics: the token is required; the exposition passes promtool.
        assert get(ctl.port, "/metrics")[0] == 401
        assert get(ctl.port, "/metrics", token="kgmetrics_wrong_" + secrets.token_hex(8))[0] == 401
        assert get(ctl.port, "/metrics", token=token, host="rebind.example")[0] == 421
        status, headers, text = get(ctl.port, "/metrics", token=token)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        code, out = promserver.promtool_check(text)
        assert code == 0 and out == "", out
        # Every metric the README's table names is there, and so is every series its sample
        # shows.
        names, sample = readme_operations()
        assert len(names) >= 15 and len(sample) >= 5, (names, sample)
        for name in names:
            assert f"# TYPE {name} " in text, name
        for series in sample:
            assert re.search(rf"^{re.escape(series)} ", text, re.M), series

        value = lambda result: {tuple(sorted(l.items())): v for l, v in result}  # noqa: E731

        # keygatectl's own counters say what happened.
        answers = value(prometheus.wait_for(
            "keygatectl_keymap_answers_total",
            lambda r: all(v >= 1 for l, v in r if l["kind"] in ("full", "delta"))))
        kinds = {dict(k)["kind"] for k in answers}
        assert kinds == {"full", "delta", "not_modified"}, answers
        version = ctl.store_status()["version"]
        prometheus.wait_for(f"keygatectl_keymap_version == {version}", bool)
        prometheus.wait_for("keygatectl_keymap_keys == 4", bool)  # the rolled key replaced
        prometheus.wait_for('keygatectl_sign_in_failures_total{where="admin_api"} >= 1', bool)
        prometheus.wait_for('keygatectl_sign_in_failures_total{where="metrics"} >= 1', bool)
        prometheus.wait_for('keygatectl_keymap_answer_bytes_count{kind="full"} >= 1', bool)
        prometheus.wait_for("keygatectl_keymap_build_seconds_count >= 1", bool)
        prometheus.wait_for('keygatectl_store_transaction_seconds_count{backend="sqlite",kind="write"} >= 2', bool)
        prometheus.wait_for('keygatectl_http_requests_total{route="/v1/keys/{key_id}/roll",method="POST",status="200"} == 1', bool)
        prometheus.wait_for('keygatectl_http_requests_total{route="/v1/keymap",status="304"} >= 1', bool)
        prometheus.wait_for("keygatectl_ready == 1", bool)
        # The Envoy's fetcher holds its watch.
        prometheus.wait_for("keygatectl_keymap_watches == 1", bool)

        # The README's PromQL for this front end, as written.
        blocks = readme_promql()
        stats = blocks["Stats and access logs"]
        assert len(stats) == 2
        envoy_queries = stats[1] if harness.NATIVE_MODE else stats[0]
        prefix = harness.PROMETHEUS
        assert all(prefix + "keygate_" in q for q in envoy_queries)
        by_reason = prometheus.wait_for(
            envoy_queries[0], lambda r: {l.get("reason") for l, v in r if v > 0}
            >= {"invalid_api_key", "missing_credentials"})
        assert all(set(l) == {"reason"} for l, _ in by_reason), by_reason
        share = prometheus.wait_for(envoy_queries[1], lambda r: len(r) == 1 and r[0][1] > 0)
        assert 0 < share[0][1] < 1, share
        assert prometheus.query(envoy_queries[2]) == []  # the map is fresh: no alert
        # The counter itself, with its label, as the README names it.
        denied = prometheus.query(f'{prefix}keygate_denied{{reason="invalid_api_key"}}')
        assert len(denied) == 1 and denied[0][1] >= 3, denied
        assert prometheus.query(f'{{__name__=~"{prefix}keygate_denied_.+"}}') == []

        ops = blocks["Operations: metrics, probes, logs, TLS to PostgreSQL"]
        assert len(ops) == 1
        for query in ops[0]:
            prometheus.query(query)  # each one parses and runs
        by_kind = prometheus.wait_for(ops[0][0], lambda r: len(r) == 3)
        assert {l["kind"] for l, _ in by_kind} == {"full", "delta", "not_modified"}
        assert prometheus.query(ops[0][4]) == [({}, 0.0)]  # one replica: in step
        assert prometheus.query(ops[0][5]) == []  # ready
        # No store errors, and the series is there to say so (the alert has something to watch).
        prometheus.wait_for('keygatectl_store_errors_total{backend="sqlite",kind="write"} == 0', bool)
        assert prometheus.query(ops[0][6]) == []
    finally:
        prometheus.stop()


def test_liveness_and_readiness_answer_whatever_the_host(stopped_after):
    ctl = stopped_after(Keygatectl().start())
    for host in ("10.1.2.3:8080", "keygatectl.keygate.svc", "rebind.example"):
        assert get(ctl.port, "/livez", host=host)[:3:2] == (200, '{"status":"ok"}')
        status, _, body = get(ctl.port, "/readyz", host=host)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["status"] == "ready"
        assert doc["key_map"] == {"store": ctl.store_status()["store"],
                                  "version": ctl.store_status()["version"]}
    # The map was built at start, before any poll asked for it.
    assert "built the full key map" in ctl.read_log()


def test_readyz_fails_while_postgresql_refuses_keygatectl_and_recovers(database, stopped_after):
    replica = stopped_after(Replica(database).start())
    deadline = time.monotonic() + 30
    while (answer := get(replica.port, "/readyz"))[0] != 200:  # the map is built at start
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    # The database refuses new connections and ends keygatectl's: the store stops answering.
    database.psql("postgres", f"ALTER DATABASE {database.name} WITH ALLOW_CONNECTIONS false")
    database.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  f"WHERE datname = '{database.name}'")
    deadline = time.monotonic() + 30
    while (answer := get(replica.port, "/readyz"))[0] != 503:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    doc = json.loads(answer[2])
    assert doc["status"] == "not_ready"
    assert any("the store has not answered" in r for r in doc["reasons"]), doc
    assert get(replica.port, "/livez")[0] == 200  # alive: nothing to restart
    database.psql("postgres", f"ALTER DATABASE {database.name} WITH ALLOW_CONNECTIONS true")
    deadline = time.monotonic() + 30
    while (answer := get(replica.port, "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


def test_json_logs_are_one_event_a_line_with_a_level(stopped_after):
    ctl = stopped_after(Keygatectl().start(extra_args=["--log-format", "json",
                                                       "--log-level", "debug"]))
    _, keys = ctl.create_account()
    get(ctl.port, "/v1/accounts", token="kgwrong_" + secrets.token_hex(16))
    ctl.key_map()
    lines = [line for line in ctl.read_log().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line one JSON object
    assert all(set(e) == {"time", "level", "message"} for e in events), events
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"]) for e in events)
    levels = {e["level"] for e in events}
    assert {"info", "warn", "debug"} <= levels, levels
    assert any(e["level"] == "warn" and "wrong admin token" in e["message"] for e in events)
    assert any(e["level"] == "debug" and e["message"].startswith("GET /v1/keymap 200")
               for e in events)
    text = ctl.read_log()
    for secret in [ctl.token, ctl.sync_token] + [k["key"] for k in keys.values()]:
        assert secret not in text
