"""Sync answers nothing may freeze on, through a real Envoy (2 workers), with the fetcher of
the front end under test (the wasm `keygate_sync` service, or the native module's thread):
a large malformed binary map, versions from another lineage, a rogue version, a hanging
control plane, and proxy variables in Envoy's environment."""

import socket
import threading
import time

import httpx
import pytest

import harness
import keys as keylib
from controlplane import ScriptedControlPlane, binary_map, encode_entry
from test_sync import start_sync_envoy, status_of, statuses, wait_for

SYNC = harness.STATS + "keygate.sync."


@pytest.fixture
def cp():
    server = ScriptedControlPlane()
    yield server
    server.close()


def sync_stats(envoy):
    return envoy.counters(SYNC)


def new_entry(name):
    key = keylib.make_key("secret", "test")
    return key, keylib.entry(key, "acct_demo", f"key_{name}", "secret", "test")


def test_a_large_malformed_binary_map_is_refused_and_envoy_stays_responsive(upstream, cp, keyset):
    cp.publish(keyset.entries, store="store_a")
    envoy = start_sync_envoy(upstream, cp)
    try:
        wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
        # 30,000 entries (about 2 MB, far more than one read of the answer), the 100th with
        # an account id that is not UTF-8.
        many = [keylib.entry(keylib.make_key(), "acct_x", f"k{i}", "secret", "test")
                for i in range(30_000)]
        many.sort(key=lambda e: e["digest"])
        body = bytearray(binary_map(2, []))
        body[16:20] = len(many).to_bytes(4, "little")
        for i, e in enumerate(many):
            body += encode_entry(e, account_id=b"\xff\xfe" if i == 99 else None)
        before = sync_stats(envoy).get("refused", 0)
        cp.answer(200, bytes(body), content_type="application/x-keygate-map")
        wait_for(lambda: sync_stats(envoy).get("refused", 0) > before, timeout=30)
        # Envoy's main thread (admin, xDS, the fetcher) still answers, the map still serves.
        assert envoy.ready()
        assert "keygate" in envoy.admin("/stats?filter=keygate")
        assert statuses(envoy, keyset.keys["sk_test"]) == {200}
        assert "malformed or truncated entry" in envoy.read_log()
        # The next good answer is applied.
        key, entry = new_entry("after")
        cp.publish(keyset.entries + [entry], version=3)
        wait_for(lambda: statuses(envoy, key, 6) == {200}, timeout=10)
    finally:
        envoy.stop()


def test_a_rogue_version_then_another_store_does_not_freeze_the_map(upstream, cp, keyset):
    cp.publish(keyset.entries, store="store_a")
    envoy = start_sync_envoy(upstream, cp)
    try:
        wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
        # A version no keygatectl can issue (2^64 - 1) is refused outright.
        rogue_key, rogue = new_entry("rogue")
        refused = sync_stats(envoy).get("refused", 0)
        cp.publish(keyset.entries + [rogue], version=2**64 - 1)
        wait_for(lambda: sync_stats(envoy).get("refused", 0) > refused)
        assert statuses(envoy, rogue_key) == {401}
        # The highest version one store can have, then the same store going back: refused.
        cp.publish(keyset.entries + [rogue], version=2**63 - 1)
        wait_for(lambda: statuses(envoy, rogue_key, 6) == {200})
        stale_key, stale = new_entry("stale")
        refused = sync_stats(envoy).get("refused", 0)
        cp.publish(keyset.entries + [stale], version=11)
        wait_for(lambda: sync_stats(envoy).get("refused", 0) > refused)
        assert statuses(envoy, stale_key) == {401}, "a lower version of one store stays refused"
        # Another store (a restored or migrated database): a new lineage, taken as it is.
        new_key, new = new_entry("lineage")
        cp.publish(keyset.entries + [new], version=11, store="store_b")
        wait_for(lambda: statuses(envoy, new_key, 6) == {200}, timeout=10)
        assert statuses(envoy, rogue_key) == {401}, "the old lineage's keys are gone"
        stats = sync_stats(envoy)
        assert stats["lineage_changes"] == 1
        assert stats["version"] == 11
        # and its next version is a delta poll of the new lineage.
        wait_for(lambda: any("store=store_b" in path for path, _ in cp.polls[-3:]))
    finally:
        envoy.stop()


def test_the_age_grows_while_a_poll_hangs(upstream, cp, keyset):
    cp.publish(keyset.entries)
    envoy = start_sync_envoy(upstream, cp, service_overrides={"timeout_ms": 60000})
    try:
        wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
        cp.hang = True
        # A poll now waits for an answer that does not come (up to a minute); the staleness
        # the README's alert reads must show it anyway.
        wait_for(lambda: sync_stats(envoy).get("age_ms", 0) >= 2500, timeout=30)
        assert statuses(envoy, keyset.keys["sk_test"]) == {200}
    finally:
        cp.hang = False
        envoy.stop()


@pytest.fixture
def dead_proxy():
    """A listener that counts connections and closes them: what a proxy named in Envoy's
    environment would be."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()


def test_proxy_variables_in_envoys_environment_are_not_used(upstream, cp, keyset, dead_proxy):
    proxy_url, accepted = dead_proxy
    cp.publish(keyset.entries)
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    env = dict.fromkeys(names, proxy_url) | {"NO_PROXY": "", "no_proxy": ""}
    envoy = start_sync_envoy(upstream, cp, env=env)
    try:
        wait_for(lambda: status_of(envoy, keyset.keys["sk_test"]) == 200)
        key, entry = new_entry("direct")
        cp.publish(keyset.entries + [entry])
        wait_for(lambda: statuses(envoy, key, 6) == {200})
        assert accepted == [], "a poll went to the proxy of Envoy's environment"
    finally:
        envoy.stop()


def test_usage_is_counted_at_the_edge_and_reported_without_double_counting(upstream, cp, keyset):
    """Traffic with several keys: the fetcher reports each key's allowed and refused
    requests; a report keygatectl did not take is sent again with the same id."""
    cp.publish(keyset.entries)
    cp.report_statuses = [503]  # the first report is not taken
    envoy = start_sync_envoy(upstream, cp, service_overrides={"usage_interval_ms": 1000})
    try:
        warm_up = {"authorization": f"token {keyset.keys['sk_production']}"}
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            # Until a report holds the warm-up key: the map is served, the workers count
            # (each reads the fetcher's flag on its ticks), and reports reach keygatectl.
            wait_for(lambda: client.get("/v3/devices", headers=warm_up).status_code == 200
                     and "key_sk_production" in cp.usage_by_key(), timeout=30)
            sent = {"sk_test": 0, "pk_test": 0}
            for i in range(30):
                for name in ("sk_test", "pk_test"):
                    # pk_test on a list: refused, but the key was known, so it counts.
                    client.get("/v3/devices", headers={"authorization": f"token {keyset.keys[name]}"})
                    sent[name] += 1
            client.get("/v3/devices", headers={"authorization": "token sk_test_unknown"})
        want = {"key_sk_test": {"allowed": sent["sk_test"], "refused": 0},
                "key_pk_test": {"allowed": 0, "refused": sent["pk_test"]}}

        def measured():
            usage = cp.usage_by_key()
            return {k: usage.get(k) for k in want}
        wait_for(lambda: measured() == want, timeout=30)
        assert set(cp.usage_by_key()) == {"key_sk_production", "key_sk_test", "key_pk_test"}
        ids = [report_id for report_id, _, status in cp.reports]
        refused_id = next(r for r, _, status in cp.reports if status == 503)
        assert ids.count(refused_id) >= 2, "the report keygatectl refused was sent again"
        counters = envoy.counters()
        assert counters["usage.reports"] >= 2 and counters["usage.errors"] >= 1, counters
        assert counters["usage.unattributed"] == 0, counters
    finally:
        envoy.stop()
