"""Per-key rate limits through a real Envoy (2 workers), answered by Envoy itself: 429 with
`Retry-After` and the rate-limit headers, another key of the same account unaffected, limits
shipped in the synced map (JSON and binary) changed and removed without a restart.

Requests go on one keep-alive connection, so one worker judges them: the native module keeps
one state for all workers, the wasm filter one per worker (each admits its
`rate_limit_workers` share), and on one connection both admit exactly the key's burst."""

import json

import httpx
import pytest

import harness
import keys as keylib
from conftest import KeySet, start_envoy
from controlplane import ScriptedControlPlane, binary_map
from test_sync import start_sync_envoy, wait_for


@pytest.fixture
def keyset():
    ks = KeySet()
    ks.add("limited", keylib.make_key(), key_type="secret", environment="test",
           rate_limit={"requests": 3, "per": "minute"})
    ks.add("neighbour", keylib.make_key(), key_type="secret", environment="test")
    ks.add("generous", keylib.make_key(), key_type="secret", environment="test",
           rate_limit={"requests": 100, "per": "minute"})
    return ks


def calls(client, key, n):
    return [client.get("/v3/devices", headers={"authorization": f"token {key}"}) for _ in range(n)]


def test_a_key_over_its_limit_gets_429_from_envoy(upstream, keyset):
    envoy = start_envoy(upstream, keyset=keyset)
    try:
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            answers = calls(client, keyset.keys["limited"], 4)
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            limited = answers[-1]
            assert limited.json()["error"]["code"] == "rate_limited"
            assert limited.headers["content-type"] == "application/json"
            assert 1 <= int(limited.headers["retry-after"]) <= 20
            assert limited.headers["ratelimit-policy"] == '"keygate";q=3;w=60'
            assert limited.headers["ratelimit"] == f'"keygate";r=0;t={limited.headers["retry-after"]}'
            assert "www-authenticate" not in limited.headers
            # Another key of the same account is not limited by it.
            assert [r.status_code for r in calls(client, keyset.keys["neighbour"], 5)] == [200] * 5
        assert len(upstream.take()) == 8, "the refused request never reached the upstream"
        # Counted (the wasm filter flushes its counts every 50 ms), and logged with its reason.
        wait_for(lambda: envoy.counters().get("denied.rate_limited") == 1)
        wait_for(lambda: "keygate_rate_limited" in envoy.read_log())
    finally:
        envoy.stop()


def test_wasm_workers_each_admit_their_share(upstream, keyset):
    """`rate_limit_workers` 3 on a key of 3 a minute: one a worker. The native module keeps
    one state for the whole process and ignores the setting."""
    envoy = start_envoy(upstream, keyset=keyset, plugin_overrides={"rate_limit_workers": 3})
    try:
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            statuses = [r.status_code for r in calls(client, keyset.keys["limited"], 4)]
        if harness.NATIVE_MODE:
            assert statuses == [200, 200, 200, 429]
        else:
            assert statuses == [200, 429, 429, 429]
    finally:
        envoy.stop()


def rate_limit_headers(response):
    return {name: response.headers.get(name) for name in ("ratelimit-policy", "ratelimit")}


def test_rate_limit_headers_are_off_by_default(upstream, keyset):
    envoy = start_envoy(upstream, keyset=keyset)
    try:
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            allowed = calls(client, keyset.keys["limited"], 1)[0]
            assert allowed.status_code == 200
            assert rate_limit_headers(allowed) == {"ratelimit-policy": None, "ratelimit": None}
    finally:
        envoy.stop()


@pytest.mark.skipif(harness.NATIVE_MODE, reason="the wasm filter's refusal")
def test_the_wasm_filter_refuses_rate_limit_headers_and_says_why(upstream, keyset):
    """A response hook would cost every request whether the setting is on or not (proxy-wasm
    calls an exported callback for every stream), so the wasm filter refuses the setting
    rather than ignoring it: Envoy does not start, and the log says where it is offered."""
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1]}
    config = harness.localize(harness.load_example("envoy.yaml"), ports)
    plugin = harness.plugin_config(config)
    plugin.update(keys=keyset.entries, rate_limit_headers=True)
    harness.set_plugin_config(config, plugin)
    envoy = harness.Envoy(config)
    try:
        assert envoy.start(expect_failure=True) != 0
    finally:
        envoy.stop()
    errors = [line for line in envoy.read_log().splitlines()
              if "invalid keygate config: rate_limit_headers" in line]
    assert errors and all("the native module offers it" in line for line in errors), errors


@pytest.mark.skipif(not harness.NATIVE_MODE, reason="offered by the native module")
def test_rate_limit_headers_on_allowed_responses_when_asked(upstream, keyset):
    """`rate_limit_headers`: a limited key's allowed responses say its policy and what is
    left after each request (`t`: seconds until the quota is whole again); an unlimited key's
    get none. Ours replace an upstream's of those names for a limited key; an unlimited key's
    answer keeps the upstream's untouched."""
    envoy = start_envoy(upstream, keyset=keyset, plugin_overrides={"rate_limit_headers": True})
    try:
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            answers = calls(client, keyset.keys["limited"], 4)
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            for i, allowed in enumerate(answers[:3]):
                assert allowed.json()["upstream"] == "ok"
                assert allowed.headers["ratelimit-policy"] == '"keygate";q=3;w=60'
                state = allowed.headers["ratelimit"]
                remaining, seconds = (int(part.split("=")[1]) for part in state.split(";")[1:])
                assert state.startswith('"keygate";r=')
                # 3 a minute: one more token every 20 s; r falls by one a request.
                assert remaining == 2 - i
                assert 20 * i < seconds <= 20 * (i + 1)
                assert len(allowed.headers.get_list("ratelimit")) == 1
            assert answers[3].headers["ratelimit-policy"] == '"keygate";q=3;w=60'

            free = calls(client, keyset.keys["neighbour"], 1)[0]
            assert free.status_code == 200
            assert rate_limit_headers(free) == {"ratelimit-policy": None, "ratelimit": None}

            upstream_says = {"x-test-answer-header": "ratelimit: upstream-value"}
            free = client.get("/v3/devices", headers={
                "authorization": f"token {keyset.keys['neighbour']}", **upstream_says})
            assert free.headers.get_list("ratelimit") == ["upstream-value"]
            limited = client.get("/v3/devices", headers={
                "authorization": f"token {keyset.keys['generous']}", **upstream_says})
            assert limited.status_code == 200
            assert limited.headers.get_list("ratelimit") == ['"keygate";r=99;t=1']
            assert limited.headers["ratelimit-policy"] == '"keygate";q=100;w=60'
    finally:
        envoy.stop()


@pytest.fixture
def cp():
    server = ScriptedControlPlane()
    yield server
    server.close()


@pytest.mark.parametrize("form", ["json", "binary"])
def test_a_limit_set_changed_and_removed_in_the_synced_map_applies_without_restart(
        upstream, cp, keyset, form):
    def publish(limit):
        entries = [dict(e) for e in keyset.entries]
        for e in entries:
            e.pop("rate_limit", None)
            if e["key_id"] == "key_limited" and limit:
                e["rate_limit"] = limit
        version = cp.publish(entries)
        if form == "binary":
            cp.answer(200, binary_map(version, entries), content_type="application/x-keygate-map")
        return version

    publish({"requests": 2, "per": "minute"})
    envoy = start_sync_envoy(upstream, cp)
    try:
        key = keyset.keys["limited"]
        with httpx.Client(base_url=envoy.url, timeout=5) as client:
            wait_for(lambda: calls(client, keyset.keys["neighbour"], 1)[0].status_code == 200)
            assert [r.status_code for r in calls(client, key, 3)] == [200, 200, 429]
            # Raised: the new burst applies as soon as the worker serves the new map (a
            # refused request costs nothing, so waiting on one is free).
            publish({"requests": 50, "per": "minute"})
            wait_for(lambda: calls(client, key, 1)[0].status_code == 200)
            assert [r.status_code for r in calls(client, key, 49)] == [200] * 49
            assert calls(client, key, 1)[0].status_code == 429
            # Removed: never limited again.
            publish(None)
            wait_for(lambda: calls(client, key, 1)[0].status_code == 200)
            assert [r.status_code for r in calls(client, key, 100)] == [200] * 100
    finally:
        envoy.stop()


def test_a_map_with_limits_is_refused_whole_by_the_filter_when_malformed(upstream, cp, keyset):
    """A limit a filter cannot read is never guessed at: the answer is refused and the last
    map keeps serving."""
    cp.publish(keyset.entries)
    envoy = start_sync_envoy(upstream, cp)
    try:
        wait_for(lambda: httpx.get(envoy.url + "/v3/devices", timeout=5, headers={
            "authorization": f"token {keyset.keys['neighbour']}"}).status_code == 200)
        bad = [dict(e) for e in keyset.entries]
        bad[0]["rate_limit"] = {"requests": 5, "per": "fortnight"}
        refused = envoy.counters(harness.STATS + "keygate.sync.").get("refused", 0)
        cp.answer(200, json.dumps({"kind": "full", "version": 99, "keys": bad}))
        wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("refused", 0) > refused)
        assert envoy.counters(harness.STATS + "keygate.sync.")["version"] != 99
    finally:
        envoy.stop()
