"""Sync mode through a real Envoy (2 workers): the singleton fetcher polls a control plane,
publishes to shared data, and every worker obeys; faults keep the last good map."""

import time

import httpx
import pytest

import harness
import keys as keylib
from controlplane import ScriptedControlPlane

INTERVAL_MS = 200


def start_sync_envoy(upstream, cp, plugin_overrides=None, service_overrides=None, env=None):
    config = harness.load_example("envoy-sync.yaml")
    ports = {
        9901: harness.free_port(),
        10000: harness.free_port(),
        8081: upstream.server_address[1],
        8080: cp.port,
    }
    config = harness.localize(config, ports)
    plugin = harness.plugin_config(config)
    plugin.update(plugin_overrides or {})
    harness.set_plugin_config(config, plugin)
    service = harness.service_config(config)
    # The stand-in answers watches at once, as a keygatectl that ignores `wait` would; a
    # one-second wait keeps a hanging answer's timeout (the wait, then timeout_ms) short.
    service.update({"interval_ms": INTERVAL_MS, "timeout_ms": 500, "wait": 1})
    service.update(service_overrides or {})
    harness.set_service_config(config, service)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start(env=env)
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


@pytest.fixture
def cp():
    server = ScriptedControlPlane()
    yield server
    server.close()


@pytest.fixture
def synced(upstream, cp, keyset):
    cp.publish(keyset.entries)
    envoy = start_sync_envoy(upstream, cp)
    wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
    yield envoy
    envoy.stop()


def status_of(envoy, key, path="/v3/devices"):
    """One request on a fresh connection, so Envoy may pick any worker."""
    headers = {"authorization": f"token {key}", "connection": "close"}
    return httpx.get(envoy.url + path, headers=headers, timeout=5).status_code


def statuses(envoy, key, n=None):
    """The statuses Envoy's workers answer `key` with, asked on a connection pinned to each
    worker (`n`, the number of samples this once took, is no longer needed)."""
    with harness.connections_on_every_worker(envoy) as workers:
        return {status for status, _ in workers.answers(key).values()}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_before_the_first_map_requests_fail_closed_with_503(upstream, cp, keyset):
    cp.answer(500, "not ready")
    envoy = start_sync_envoy(upstream, cp)
    try:
        r = httpx.get(envoy.url + "/v3/devices", headers={"authorization": f"token {keyset.keys['sk_test']}"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "key_map_unavailable"
        assert upstream.take() == []
        cp.publish(keyset.entries)
        wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
    finally:
        envoy.stop()


def test_bootstrap_keys_serve_until_the_first_sync(upstream, cp, keyset):
    cp.answer(500, "not ready")
    envoy = start_sync_envoy(upstream, cp, plugin_overrides={"keys": keyset.entries[:1]})
    try:
        assert status_of(envoy, keyset.keys["sk_test"]) == 200
    finally:
        envoy.stop()


def test_synced_keys_work_on_every_worker(synced, keyset):
    with harness.connections_on_every_worker(synced) as workers:
        for name in ("sk_test", "sk_production"):
            assert workers.everywhere(keyset.keys[name]) == {(200, None)}
        assert workers.everywhere(keyset.keys["pk_test"]) == {(403, "insufficient_permissions")}
    gauges = synced.counters(harness.STATS + "keygate.sync.")
    assert gauges["version"] == 1
    assert gauges["keys"] == 4


def test_a_roll_reaches_every_worker_within_the_interval(synced, cp, keyset):
    old = keyset.keys["sk_test"]
    new = keylib.make_key("secret", "test")
    entries = [e for e in keyset.entries if e["digest"] != keylib.digest(old)]
    entries.append(keylib.entry(new, "acct_demo", "key_new", "secret", "test"))
    with harness.connections_on_every_worker(synced) as workers:
        started = time.monotonic()
        cp.publish(entries)
        done = wait_for(lambda: workers.everywhere(old) == {(401, "invalid_api_key")}
                        and workers.everywhere(new) == {(200, None)})
    elapsed = done - started
    print(f"roll visible on each worker after {elapsed * 1000:.0f} ms")
    assert httpx.get(synced.url + "/v3/x", headers={"authorization": f"token {old}"}).json()["error"]["code"] == "invalid_api_key"


def test_unchanged_maps_are_answered_304_and_polled_with_the_version(synced, cp):
    # The stand-in ignores `wait` and answers each watch 304 at once: the fetcher asks again
    # after the interval, never at once (no spin).
    start, first = time.monotonic(), len(cp.polls)
    wait_for(lambda: len(cp.polls) >= first + 4)
    elapsed, later = time.monotonic() - start, cp.polls[1:]
    assert all(inm == '"1"' and path.endswith("?since=1&wait=1") for path, inm in later), later
    assert synced.counters(harness.STATS + "keygate.sync.")["not_modified"] >= 1
    # A rate bound, not a time limit: a slower machine only polls less. Polls are at least
    # the interval less its jitter share and one 100 ms tick apart.
    least_gap = INTERVAL_MS * 0.9 / 1000 - 0.1
    assert len(cp.polls) - first <= elapsed / least_gap + 2, (len(cp.polls), elapsed)


@pytest.mark.parametrize(
    "status,body",
    [
        (200, "this is not json"),
        (200, '{"kind":"full","version":9,"keys":['),  # truncated
        (200, '{"kind":"full","version":9,"keys":[{"digest":"zz"}]}'),  # wrong schema
        (200, '{"kind":"full","version":9}'),
        (200, '{"kind":"full","version":9,"keys":[]}'),  # empty map: looks like a mistake
        (200, '{"kind":"full","version":0,"keys":[]}'),  # older version
        (500, "internal error"),
        (404, "not found"),
    ],
)
def test_bad_answers_keep_the_last_good_map(synced, cp, keyset, status, body):
    before = synced.counters(harness.STATS + "keygate.sync.")
    cp.answer(status, body)
    wait_for(lambda: synced.counters(harness.STATS + "keygate.sync.").get("errors", 0) > before.get("errors", 0))
    assert statuses(synced, keyset.keys["sk_test"]) == {200}
    assert synced.counters(harness.STATS + "keygate.sync.")["version"] == 1


def test_a_huge_garbage_answer_is_refused_and_the_map_keeps_serving(synced, cp, keyset):
    before = synced.counters(harness.STATS + "keygate.sync.").get("refused", 0)
    cp.answer(200, b'{"kind":"full","version":99,"keys":[' + b"x" * (40 << 20))
    wait_for(lambda: synced.counters(harness.STATS + "keygate.sync.").get("refused", 0) > before, timeout=15)
    assert statuses(synced, keyset.keys["sk_test"]) == {200}
    assert synced.counters(harness.STATS + "keygate.sync.")["version"] == 1


def test_control_plane_down_then_back(synced, cp, keyset):
    cp.down = True
    wait_for(lambda: synced.counters(harness.STATS + "keygate.sync.").get("errors", 0) >= 2)
    assert statuses(synced, keyset.keys["sk_test"]) == {200}
    new = keylib.make_key("secret", "test")
    cp.publish(keyset.entries + [keylib.entry(new, "acct_demo", "key_new", "secret", "test")])
    cp.down = False
    wait_for(lambda: status_of(synced, new) == 200)
    assert synced.counters(harness.STATS + "keygate.sync.")["version"] == 2


def test_a_control_plane_that_refuses_wait_is_polled_without_it(synced, cp, keyset):
    # A keygatectl from before watches answers 400 to the unknown parameter.
    cp.refuse_watch = True
    wait_for(lambda: any(status == 400 for _, status in cp.answered))
    new = keylib.make_key()
    cp.publish(keyset.entries + [keylib.entry(new, "acct_x", "k_new", "secret", "test")])
    wait_for(lambda: statuses(synced, new) == {200})
    refused = next(i for i, (_, status) in enumerate(cp.answered) if status == 400)
    later = [path for path, _ in cp.answered[refused + 1:]]
    assert later and not any("wait=" in path for path in later), later
    assert synced.counters(harness.STATS + "keygate.sync.")["errors"] >= 1


def test_a_hanging_control_plane_times_out_and_the_map_keeps_serving(synced, cp, keyset):
    cp.hang = True
    # Timed out after the wait and timeout_ms beyond it.
    wait_for(lambda: synced.counters(harness.STATS + "keygate.sync.").get("errors", 0) >= 1,
             timeout=15)
    assert statuses(synced, keyset.keys["sk_test"]) == {200}
    cp.hang = False


def test_no_wrong_decision_while_the_map_changes_many_times(synced, cp, keyset):
    steady = keyset.keys["sk_test"]
    failures = 0
    total = 0
    extra = []
    deadline = time.monotonic() + 3
    with httpx.Client(base_url=synced.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if total % 20 == 0:
                extra.append(keylib.entry(keylib.make_key(), "acct_x", f"k{total}", "secret", "test"))
                cp.publish(keyset.entries + extra[-5:])
            r = client.get("/v3/devices", headers={"authorization": f"token {steady}"})
            total += 1
            failures += r.status_code != 200
    assert cp.version > 5
    assert total > 100
    assert failures == 0
