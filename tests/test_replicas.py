"""keygatectl over PostgreSQL through a real Envoy (2 workers).

- The lifecycle suite (test_lifecycle.py) again, with keygatectl on PostgreSQL.
- keygatectl reaches PostgreSQL over TLS with the server's certificate checked
  (`sslmode=verify-full`, see pg.py): every connection of both replicas is TLS. A CA that
  did not sign the server's certificate, or a host name it does not list, is refused with the
  reason; `sslmode=require` connects without that check.
- Two replicas over one database: the `keygatectl` sync cluster lists both, with active
  health checks and outlier detection. One replica is killed while a steady stream of
  valid-key requests runs and keys roll through the other: no wrong decision, and the rolls
  keep arriving; then the first comes back and the second dies.

Needs the PostgreSQL server that KEYGATE_TEST_POSTGRES_URL names (`scripts/postgres.sh run
pytest …` starts one); each test gets a database of its own. Without it the tests are
skipped, or fail when KEYGATE_REQUIRE_POSTGRES=1 (`make test`): see pg.py."""

import json
import subprocess
import threading
import time

import httpx
import pytest

import harness
import test_lifecycle as lifecycle
from ctl import CTL, Keygatectl
from pg import TLS_DIR, Replica, database  # noqa: F401
# The lifecycle suite, collected here too: its tests take this module's `stack` fixture.
from test_lifecycle import (  # noqa: F401
    test_a_new_account_s_keys_work_through_envoy,
    test_keygatectl_down_keeps_the_last_map_and_envoy_catches_up,
    test_no_wrong_decision_while_keys_roll,
    test_revoke_disable_enable,
    test_roll_now_old_key_refused_new_key_accepted_on_every_worker,
    test_roll_with_a_grace_period,
)

INTERVAL_MS = lifecycle.INTERVAL_MS
answer = lifecycle.answer
wait_for = lifecycle.wait_for


@pytest.fixture
def stack(request, upstream, database):
    """For the lifecycle suite: one keygatectl on PostgreSQL, Envoy syncing from it."""
    ctl = Replica(database).start()
    request.addfinalizer(ctl.stop)
    envoy = lifecycle.start_envoy(upstream, ctl)
    request.addfinalizer(envoy.stop)
    return ctl, envoy


def replicated_envoy(upstream, replicas):
    """Envoy from envoy-sync.yaml, its `keygatectl` cluster listing every replica, with
    active health checks (/healthz) and outlier detection."""
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: replicas[0].port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": INTERVAL_MS, "timeout_ms": 500,
                    "bearer_token": replicas[0].sync_token})
    harness.set_service_config(config, service)
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "keygatectl")
    cluster.update(REPLICA_CLUSTER)
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": r.port}}}}
        for r in replicas
    ]
    if harness.NATIVE_MODE:
        # The native module polls the replicas itself, in turn (the cluster stays for the
        # health checks the test watches).
        plugin = harness.plugin_config(config)
        plugin["sync"]["url"] = [f"http://127.0.0.1:{r.port}/v1/keymap" for r in replicas]
        harness.set_plugin_config(config, plugin)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


# What the README recommends for the keygatectl cluster, with the test's shorter intervals.
REPLICA_CLUSTER = {
    # A replica that stops answering /healthz leaves the rotation; it rejoins when it answers.
    "health_checks": [{
        "timeout": "0.25s",
        "interval": "0.25s",
        "no_traffic_interval": "0.25s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "http_health_check": {"path": "/healthz"},
    }],
    # A replica that refuses or resets the fetcher's connection is ejected at once, before
    # the next health check (5xx answers are counted apart, 5 in a row to eject).
    "outlier_detection": {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 100,
    },
    # Health changes take effect at once (by default Envoy merges host updates for 1 s, so
    # a dead replica would keep being picked that long), and polls never spread over dead
    # replicas because too few are healthy (panic mode).
    "common_lb_config": {"update_merge_window": "0s", "healthy_panic_threshold": {"value": 0}},
}


class Traffic:
    """A steady stream of requests with a valid key, and checks that retired keys stay
    refused, on two keep-alive connections, until stopped. Counts wrong decisions."""

    def __init__(self, envoy, steady):
        self.envoy = envoy
        self.steady = steady
        self.retired = []
        self.total = 0
        self.wrong = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        clients = [httpx.Client(base_url=self.envoy.url, timeout=5) for _ in range(2)]
        try:
            while not self.stopped.is_set():
                client = clients[self.total % 2]
                r = client.get("/v3/devices", headers={"authorization": f"token {self.steady}"})
                if r.status_code != 200:
                    self.wrong.append(("steady", r.status_code, r.text[:200]))
                if self.retired and self.total % 5 == 0:
                    old = self.retired[self.total // 5 % len(self.retired)]
                    r = client.get("/v3/devices", headers={"authorization": f"token {old}"})
                    if r.status_code != 401:
                        self.wrong.append(("retired key accepted", r.status_code, r.text[:200]))
                self.total += 1
        finally:
            for c in clients:
                c.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=10)


def roll_and_wait(replica, envoy, key, traffic, timeout=5.0):
    """Rolls `key` (no grace) through `replica`; answers the new key and how long Envoy took
    to accept it, once the old one is refused."""
    rolled = replica.api("POST", f"/v1/keys/{key['key_id']}/roll", {})
    start = time.monotonic()
    new = rolled["new_key"]
    wait_for(lambda: answer(envoy, new["key"]) == (200, None), timeout=timeout)
    took = time.monotonic() - start
    wait_for(lambda: answer(envoy, key["key"]) == (401, "invalid_api_key"), timeout=timeout)
    traffic.retired.append(key["key"])
    return new, took


def test_the_replicas_reach_postgresql_over_tls_with_its_certificate_checked(database):
    """Every connection the replicas hold (pools and change listeners) is TLS, on the
    verify-full URL an operator would write."""
    assert "sslmode=verify-full" in database.url, database.url
    a = Replica(database).start()
    b = Replica(database, token=a.token).start()
    try:
        a.create_account()
        b.create_account()
        sessions = database.keygatectl_sessions()
        # Two replicas, each with its pool and its LISTEN connection.
        assert len(sessions) >= 4, sessions
        assert all(tls and version.startswith("TLSv1.") for tls, version in sessions), sessions
    finally:
        b.stop()
        a.stop()


def test_keygatectl_says_why_it_refuses_the_server_s_certificate(database):
    """As an operator sees it: keygatectl with a CA that did not sign the server's
    certificate, or connecting by a name the certificate does not list, exits saying which
    (and never the password); `sslmode=require` encrypts without that check and connects."""
    said = []

    def keygatectl(url, *args):
        out = subprocess.run([str(CTL), "--database", url, *args], capture_output=True,
                             text=True, timeout=30)
        said.append(out.stderr)
        return out

    host_url, query = database.url.split("?", 1)
    other_ca = f"{TLS_DIR}/other-ca.crt"
    wrong_ca = database.url.replace(f"{TLS_DIR}/ca.crt", other_ca)
    for args in (("--json", "keymap", "status"), ("serve", "--listen", "127.0.0.1:0")):
        out = keygatectl(wrong_ca, *args)
        assert out.returncode == 1, out
        assert ("the server's TLS certificate is not signed by a CA in sslrootcert "
                f"{other_ca} (sslmode=verify-full)") in out.stderr, out.stderr
    # The certificate names `localhost`, not the address.
    by_address = host_url.replace("@localhost:", f"@{database.env['PGHOST']}:") + "?" + "&".join(
        o for o in query.split("&") if not o.startswith("hostaddr="))
    out = keygatectl(by_address, "--json", "keymap", "status")
    assert out.returncode == 1, out
    assert (f'the server\'s TLS certificate is not valid for the host name '
            f'"{database.env["PGHOST"]}"') in out.stderr, out.stderr
    out = keygatectl(by_address.replace("sslmode=verify-full", "sslmode=require"),
                     "--json", "keymap", "status")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 0
    assert not any(database.env["PGPASSWORD"] in text for text in said)


def test_a_roll_through_one_replica_reaches_envoy_polling_the_other(upstream, database):
    a = Replica(database).start()
    b = Replica(database, token=a.token).start()
    # Envoy polls B only: every change goes through A.
    envoy = replicated_envoy(upstream, [b])
    try:
        _, keys = a.create_account()
        key = keys["sk_test"]
        wait_for(lambda: answer(envoy, key["key"]) == (200, None))
        took = []
        with Traffic(envoy, keys["sk_production"]["key"]) as traffic:
            for _ in range(5):
                key, t = roll_and_wait(a, envoy, key, traffic)
                took.append(t)
        assert traffic.wrong == []
        print(f"\nroll through replica A → accepted by Envoy polling replica B: "
              f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms (poll interval {INTERVAL_MS} ms)")
    finally:
        envoy.stop()
        b.stop()
        a.stop()


def test_a_replica_dies_while_envoy_syncs_no_wrong_decision_and_rolls_keep_arriving(upstream, database):
    a = Replica(database).start()
    b = Replica(database, token=a.token).start()
    envoy = replicated_envoy(upstream, [a, b])
    try:
        _, keys = a.create_account()
        churn = keys["sk_test"]
        wait_for(lambda: answer(envoy, churn["key"]) == (200, None))
        timings = {}
        with Traffic(envoy, keys["sk_production"]["key"]) as traffic:
            # Both up: rolls through either replica arrive.
            churn, _ = roll_and_wait(a, envoy, churn, traffic)
            churn, _ = roll_and_wait(b, envoy, churn, traffic)
            # A dies: rolls through B keep arriving.
            errors_before = envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
            a.kill()
            timings["A dead"] = []
            for _ in range(6):
                churn, took = roll_and_wait(b, envoy, churn, traffic)
                timings["A dead"].append(took)
            failed_polls = {"A dead": envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
                            - errors_before}
            # A comes back on its port; then B dies: rolls through A arrive.
            a.start(port=a.port)
            wait_for(lambda: cluster_health(envoy).get(a.port) == "healthy")
            errors_before = envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
            b.kill()
            timings["B dead"] = []
            for _ in range(4):
                churn, took = roll_and_wait(a, envoy, churn, traffic)
                timings["B dead"].append(took)
            failed_polls["B dead"] = (envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
                                      - errors_before)
            time.sleep(INTERVAL_MS / 1000 * 3)
        stats = envoy.counters("cluster.keygatectl.")
        print(f"\n{traffic.total} requests with a valid key, {len(traffic.retired)} rolls, "
              f"{len(traffic.wrong)} wrong decisions; failed polls: {failed_polls}; "
              + "; ".join(f"rolls accepted by Envoy with {k}: "
                          + ", ".join(f"{t * 1000:.0f}" for t in v) + " ms"
                          for k, v in timings.items())
              + f"; outlier ejections {stats.get('outlier_detection.ejections_enforced_total', 0)}, "
              f"health check failures {stats.get('health_check.failure', 0)}")
        assert traffic.wrong == []
        assert traffic.total >= 100
        assert len(traffic.retired) == 12
        # A dead replica costs at most a failed poll (retried one interval later; a second
        # if the first was a reset mid-answer, which counts apart), never the map.
        assert max(failed_polls.values()) <= 2, failed_polls
        assert max(max(v) for v in timings.values()) < INTERVAL_MS / 1000 + 2.0
    finally:
        envoy.stop()
        b.stop()
        a.stop()


def cluster_health(envoy):
    """port → "healthy" or the failure flags, from Envoy's /clusters."""
    out = {}
    for line in envoy.admin("/clusters").splitlines():
        if line.startswith("keygatectl::127.0.0.1:") and "::health_flags::" in line:
            port = int(line.split("::")[1].rsplit(":", 1)[1])
            out[port] = line.rsplit("::", 1)[1]
    return out


def test_concurrent_rolls_through_both_replicas_keep_versions_strictly_rising(upstream, database):
    a = Replica(database).start()
    b = Replica(database, token=a.token).start()
    envoy = replicated_envoy(upstream, [a, b])
    try:
        accounts = [r.create_account()[1] for r in (a, b)]
        results = {}

        def roll(replica, key, n):
            for _ in range(n):
                key = replica.api("POST", f"/v1/keys/{key['key_id']}/roll", {})["new_key"]
            results[replica.port] = key

        threads = [threading.Thread(target=roll, args=(r, keys["sk_test"], 15))
                   for r, keys in zip((a, b), accounts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The last key of each chain works through Envoy; the versions each replica logged
        # for its rolls strictly rise, and together cover every version once.
        for key in results.values():
            wait_for(lambda: answer(envoy, key["key"]) == (200, None))
        versions = {r.port: [int(line.rsplit("(key map version ", 1)[1].rstrip(")"))
                             for line in r.read_log().splitlines() if " rolled to " in line]
                    for r in (a, b)}
        for v in versions.values():
            assert len(v) == 15 and v == sorted(set(v)), v
        every = versions[a.port] + versions[b.port]
        assert len(set(every)) == 30, "each roll a version of its own"
        wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("version") == max(every))
    finally:
        envoy.stop()
        b.stop()
        a.stop()


def test_a_fleet_moved_from_sqlite_to_postgresql_takes_the_new_store(upstream, database):
    """keygatectl moved from SQLite to PostgreSQL behind the same address: every worker takes
    the new store's map (another lineage), whatever its versions, and later rolls arrive."""
    sqlite = Keygatectl().start()
    envoy = replica = None
    try:
        envoy = lifecycle.start_envoy(upstream, sqlite)
        _, old_keys = sqlite.create_account()
        wait_for(lambda: answer(envoy, old_keys["sk_test"]["key"]) == (200, None))
        port = sqlite.port
        sqlite.stop()
        database.sync_token = sqlite.sync_token  # the fleet's configured token, kept
        replica = Replica(database).start(port=port)
        _, new_keys = replica.create_account()
        with harness.connections_on_every_worker(envoy) as workers:
            wait_for(lambda: workers.everywhere(new_keys["sk_test"]["key"]) == {(200, None)}
                     and workers.everywhere(old_keys["sk_test"]["key"])
                     == {(401, "invalid_api_key")}, timeout=15)
            rolled = replica.api("POST", f"/v1/keys/{new_keys['sk_test']['key_id']}/roll", {})
            wait_for(lambda: workers.everywhere(new_keys["sk_test"]["key"])
                     == {(401, "invalid_api_key")}
                     and workers.everywhere(rolled["new_key"]["key"]) == {(200, None)}, timeout=15)
        assert envoy.counters(harness.STATS + "keygate.sync.").get("lineage_changes", 0) >= 1
    finally:
        for process in (envoy, replica, sqlite):
            if process is not None:
                process.stop()
