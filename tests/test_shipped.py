"""The example configs carry traffic as shipped: each file under envoy/ is run by a real
Envoy (2 workers) with only its ports (and, for the static maps, its empty `"keys": []`)
replaced as text, from the repository root where its module paths point. No load and
re-dump: what runs is the file people copy.

- envoy-sync.yaml / envoy-native-sync.yaml: keys made in a real keygatectl work on every
  worker; a key rolled there is refused on every worker, its successor accepted.
- envoy-replicas.yaml: two keygatectl replicas over PostgreSQL; Envoy's health checks are
  active for both hosts; one replica killed, then the other: the map keeps updating.
- envoy.yaml / envoy-native.yaml: the static map, empty as shipped (every key refused) and
  filled with digests (keys work).
- envoy-ecds.yaml with keygate-filter.yaml: the filter arrives by ECDS from the shipped file.

Each file runs in the pass of its own front end (the wasm files in the default pass, the
native files with KEYGATE_FRONTEND=native)."""

import json
import time

import httpx
import pytest

import harness
from ctl import Keygatectl
from pg import Replica, database  # noqa: F401
from ratelimit_service import RateLimitService

WASM_FILES = {"envoy.yaml", "envoy-sync.yaml", "envoy-replicas.yaml", "envoy-ecds.yaml",
              "envoy-global-ratelimit.yaml"}
NATIVE_FILES = {"envoy-native.yaml", "envoy-native-sync.yaml"}


def shipped(name):
    """`name` as a test parameter, skipped outside the pass of that file's front end."""
    native = name in NATIVE_FILES
    assert native or name in WASM_FILES, name
    return pytest.param(name, id=name, marks=pytest.mark.skipif(
        native != harness.NATIVE_MODE,
        reason=f"{name} is a {'native' if native else 'wasm'} example: it runs in that pass"))


def test_every_example_config_runs_here():
    """A new example under envoy/ must be added to this suite (or, if it is no Envoy
    bootstrap config of its own, to the list below)."""
    others = {"docker-compose.yaml", "docker-compose.native.yaml", "keygate-filter.yaml"}
    shipped = {p.name for p in harness.ENVOY_DIR.glob("*.yaml")}
    assert shipped == WASM_FILES | NATIVE_FILES | others


def start_shipped(name, ports, replace=None):
    """Envoy running the example `name` with `ports` ({example port: test port}, every one
    of them present) and `replace` ({text: text}) substituted as text."""
    ports = {9901: harness.free_port(), 10000: harness.free_port(), **ports}
    envoy = harness.Envoy(harness.shipped_text(name, ports, replace), concurrency=2,
                          cwd=harness.ROOT)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


def answer(envoy, key, path="/v3/devices"):
    """(status, error code) of one request on a fresh connection."""
    r = httpx.get(envoy.url + path, headers={"authorization": f"token {key}",
                                            "connection": "close"}, timeout=5)
    code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
    return r.status_code, code


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met in {timeout} s")


# The shipped poll interval is 1 s: a change reaches Envoy within a few seconds.
SYNC_WAIT = 15


@pytest.mark.parametrize("name", [shipped("envoy-sync.yaml"), shipped("envoy-native-sync.yaml")])
def test_sync_example_keys_work_and_a_roll_is_refused_on_every_worker(name, upstream,
                                                                     stopped_after):
    ctl = stopped_after(Keygatectl().start())
    # The sync token placeholder too, as `keygatectl sync-token render` fills it.
    envoy = stopped_after(start_shipped(name, {8081: upstream.server_address[1], 8080: ctl.port},
                                        replace={"KEYGATE_SYNC_TOKEN": ctl.sync_token}))
    account, keys = ctl.create_account()
    sk, pk = keys["sk_test"], keys["pk_test"]
    wait_for(lambda: answer(envoy, sk["key"]) == (200, None), SYNC_WAIT, "the first map")
    with harness.connections_on_every_worker(envoy) as workers:
        assert workers.everywhere(sk["key"]) == {(200, None)}
        assert workers.everywhere(keys["sk_production"]["key"]) == {(200, None)}
        assert workers.everywhere(pk["key"]) == {(403, "insufficient_permissions")}
        assert workers.everywhere(pk["key"], "/v3/devices/dev_1") == {(200, None)}
        seen = dict(upstream.take()[-1]["headers"])
        assert seen["x-keygate-account-id"] == account
        new = ctl.api("POST", f"/v1/keys/{sk['key_id']}/roll", {})["new_key"]["key"]
        wait_for(lambda: workers.everywhere(sk["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(new) == {(200, None)}, SYNC_WAIT,
                 "the roll on every worker")


@pytest.mark.parametrize("name", [shipped("envoy.yaml"), shipped("envoy-native.yaml")])
def test_static_example_refuses_every_key_as_shipped_and_serves_the_keys_put_in(
        name, upstream, keyset):
    envoy = start_shipped(name, {8081: upstream.server_address[1]})
    try:
        with harness.connections_on_every_worker(envoy) as workers:
            assert workers.everywhere(keyset.keys["sk_test"]) == {(401, "invalid_api_key")}
            r = httpx.get(envoy.url + "/v3/devices", timeout=5)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Token realm="api"')
        assert upstream.take() == []
    finally:
        envoy.stop()
    # The same file with the digests (and nothing else) put into its empty map.
    envoy = start_shipped(name, {8081: upstream.server_address[1]},
                          {'"keys": []': '"keys": ' + json.dumps(keyset.entries)})
    try:
        with harness.connections_on_every_worker(envoy) as workers:
            assert workers.everywhere(keyset.keys["sk_test"]) == {(200, None)}
            assert workers.everywhere(keyset.keys["pk_test"]) == {(403, "insufficient_permissions")}
            assert workers.everywhere(keyset.keys["pk_test"], "/v3/devices/d1") == {(200, None)}
    finally:
        envoy.stop()


@pytest.mark.parametrize("name", [shipped("envoy-global-ratelimit.yaml")])
def test_global_ratelimit_example_asks_the_service_about_keygates_identity(
        name, upstream, keyset, stopped_after):
    service = RateLimitService()
    try:
        envoy = stopped_after(start_shipped(
            name, {8081: upstream.server_address[1], 8083: service.port},
            {'"keys": []': '"keys": ' + json.dumps(keyset.entries)}))
        headers = [("authorization", f"token {keyset.keys['sk_test']}"),
                   ("x-keygate-account-id", "acct_victim")]
        assert httpx.get(envoy.url + "/v3/devices", headers=headers, timeout=5).status_code == 200
        # The service was asked with keygate's identity, not what the client sent.
        entry = next(e for e in keyset.entries if e["key_id"] == "key_sk_test")
        assert service.requests[-1] == ("keygate", [[("account_id", entry["account_id"])],
                                                    [("key_id", "key_sk_test")]])
        # The service says a key is over its fleet-wide limit: Envoy answers 429.
        service.over_limit.add("key_sk_test")
        r = httpx.get(envoy.url + "/v3/devices", headers=headers, timeout=5)
        assert r.status_code == 429
        other = {"authorization": f"token {keyset.keys['sk_production']}"}
        assert httpx.get(envoy.url + "/v3/devices", headers=other, timeout=5).status_code == 200
        # A request keygate refuses never reaches the service.
        asked = len(service.requests)
        r = httpx.get(envoy.url + "/v3/devices", headers={"authorization": "token nope"},
                      timeout=5)
        assert r.status_code == 401 and len(service.requests) == asked
    finally:
        service.stop()


@pytest.mark.parametrize("name", [shipped("envoy-ecds.yaml")])
def test_ecds_example_loads_the_shipped_filter_file(name, upstream, keyset):
    """envoy-ecds.yaml watches envoy/keygate-filter.yaml (relative to the repository root):
    the filter that answers is the one in that file, with its empty map."""
    envoy = start_shipped(name, {8081: upstream.server_address[1]})
    try:
        with harness.connections_on_every_worker(envoy) as workers:
            assert workers.everywhere(keyset.keys["sk_test"]) == {(401, "invalid_api_key")}
        assert "keygate: configuration loaded: 0 keys in config" in envoy.read_log()
        assert upstream.take() == []
    finally:
        envoy.stop()


def keygatectl_hosts(envoy):
    """port → {"health_flags": …, counters…} of each keygatectl host, from /clusters."""
    hosts = {}
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "keygatectl" and parts[1].startswith("127.0.0.1:"):
            port = int(parts[1].rsplit(":", 1)[1])
            value = parts[3]
            hosts.setdefault(port, {})[parts[2]] = int(value) if value.isdigit() else value
    return hosts


@pytest.mark.parametrize("name", [shipped("envoy-replicas.yaml")])
def test_replicas_example_health_checks_both_and_fails_over(name, upstream, database,
                                                           stopped_after):
    """Two replicas over one PostgreSQL at the file's two endpoints (8080, 8082)."""
    a = stopped_after(Replica(database).start())
    b = stopped_after(Replica(database, token=a.token).start())
    envoy = stopped_after(start_shipped(
        name, {8081: upstream.server_address[1], 8080: a.port, 8082: b.port},
        replace={"KEYGATE_SYNC_TOKEN": a.sync_token}))
    sync = harness.STATS + "keygate.sync."
    _, keys = a.create_account()
    key = keys["sk_test"]
    wait_for(lambda: answer(envoy, key["key"]) == (200, None), SYNC_WAIT, "the first map")
    # Active health checks on both hosts: each passed one (only the file's health_checks
    # block makes Envoy probe /healthz), and Envoy counts them for the cluster.
    wait_for(lambda: all(h.get("health_flags") == "healthy"
                         for h in keygatectl_hosts(envoy).values())
             and envoy.counters("cluster.keygatectl.health_check.").get("success", 0) >= 2,
             SYNC_WAIT, "both replicas health-checked")
    assert set(keygatectl_hosts(envoy)) == {a.port, b.port}

    def roll_through(replica, key, workers):
        new = replica.api("POST", f"/v1/keys/{key['key_id']}/roll", {})["new_key"]
        wait_for(lambda: workers.everywhere(key["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(new["key"]) == {(200, None)}, SYNC_WAIT,
                 f"the roll through {replica.port} on every worker")
        return new

    with harness.connections_on_every_worker(envoy) as workers:
        key = roll_through(b, key, workers)
        for dead, alive in ((a, b), (b, a)):
            dead.kill()
            # The health checker marks the dead replica failed: polls go to the other.
            wait_for(lambda: "/failed_active_hc" in str(
                keygatectl_hosts(envoy)[dead.port].get("health_flags")), SYNC_WAIT,
                f"replica {dead.port} marked down by the health checker")
            version = envoy.counters(sync)["version"]
            for _ in range(2):
                key = roll_through(alive, key, workers)
            assert envoy.counters(sync)["version"] >= version + 2
            # The dead one back on its port (the other dies next): healthy again.
            dead.start(port=dead.port)
            wait_for(lambda: keygatectl_hosts(envoy)[dead.port].get("health_flags")
                     == "healthy", SYNC_WAIT, f"replica {dead.port} back")
    health = envoy.counters("cluster.keygatectl.health_check.")
    assert health.get("failure", 0) + health.get("network_failure", 0) >= 2, health
