"""Per-key rate limits and accounts' default limits set in keygatectl, end to end: a real
`keygatectl serve` and a real Envoy syncing from it (the wasm filter, or the native module
under KEYGATE_FRONTEND=native). A limit set with the CLI takes effect without restart (429
from Envoy, another key of the account unaffected), one raised over the API applies too, a
removed one lifts; an account's default limits each of its keys without a limit of its own, a
key's own limit wins over it, and a removed default lifts. Bad values are refused by the CLI
and the API with the field named, and every change is in the audit trail.

Requests go on one keep-alive connection, so one worker judges them (see test_rate_limits)."""

import json
import subprocess
import urllib.error
import urllib.request

import httpx
import pytest

import harness
from ctl import CTL, Keygatectl
from test_lifecycle import start_envoy, wait_for

DEADLINE_S = 30


@pytest.fixture
def stack(request, upstream):
    ctl = Keygatectl().start()
    request.addfinalizer(ctl.stop)
    envoy = start_envoy(upstream, ctl)
    request.addfinalizer(envoy.stop)
    return ctl, envoy


def statuses(client, key, n):
    return [client.get("/v3/devices", headers={"authorization": f"token {key}"}).status_code
            for _ in range(n)]


def synced(ctl, envoy):
    """Waits until Envoy serves keygatectl's current key-map version."""
    version = ctl.store_status()["version"]
    wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("version") == version,
             timeout=DEADLINE_S)


def post(ctl, path, body):
    """(status, JSON answer) of an admin API POST, errors included."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{ctl.port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"authorization": f"Bearer {ctl.token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_limit_set_in_keygatectl_applies_without_restart_and_a_removed_one_lifts(stack):
    ctl, envoy = stack
    account, keys = ctl.create_account()
    limited, neighbour = keys["sk_test"], keys["sk_production"]
    with httpx.Client(base_url=envoy.url, timeout=5) as client:
        wait_for(lambda: statuses(client, limited["key"], 1) == [200], timeout=DEADLINE_S)

        # Set with the CLI (on the database `serve` uses): 2 a minute.
        shown = ctl.cli("key", "limit", limited["key_id"], "--requests", "2", "--per", "minute")
        assert shown["rate_limit"] == {"requests": 2, "per": "minute"}
        synced(ctl, envoy)
        # At most 2 more requests pass (the worker may take its map a tick after the fetcher).
        wait_for(lambda: statuses(client, limited["key"], 1) == [429], timeout=DEADLINE_S)
        refused = client.get("/v3/devices", headers={"authorization": f"token {limited['key']}"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.headers["ratelimit-policy"] == '"keygate";q=2;w=60'
        assert int(refused.headers["retry-after"]) >= 1
        assert statuses(client, neighbour["key"], 5) == [200] * 5, "another key of the account"

        # Raised over the API: 50 a minute applies at the next poll.
        status, answer = post(ctl, f"/v1/keys/{limited['key_id']}/rate-limit",
                              {"rate_limit": {"requests": 50, "per": "minute", "burst": 50}})
        assert status == 200, answer
        assert answer["rate_limit"] == {"requests": 50, "per": "minute", "burst": 50}
        synced(ctl, envoy)
        # A refused request costs nothing, so waiting on one is free.
        wait_for(lambda: statuses(client, limited["key"], 1) == [200], timeout=DEADLINE_S)
        burst = statuses(client, limited["key"], 60)
        assert burst.count(429) > 0 and burst.count(200) >= 40, burst
        assert burst.index(429) >= 40, "the raised burst was not applied"

        # Removed with the CLI: never limited again.
        shown = ctl.cli("key", "limit", limited["key_id"], "--remove")
        assert shown["rate_limit"] is None
        synced(ctl, envoy)
        # Five in a row: impossible under the old limit (exhausted, one back every 1.2 s).
        wait_for(lambda: statuses(client, limited["key"], 5) == [200] * 5, timeout=DEADLINE_S)
        assert statuses(client, limited["key"], 100) == [200] * 100

    # Bad values: refused with the field named, nothing changed.
    version = ctl.store_status()["version"]
    for argv, field in [(["--requests", "0", "--per", "second"], "rate_limit.requests"),
                        (["--requests", "10", "--per", "hour"], "rate_limit.per"),
                        (["--requests", "10", "--per", "second", "--burst", "2000000"],
                         "rate_limit.burst")]:
        out = subprocess.run([str(CTL), "--database", str(ctl.db), "key", "limit",
                              limited["key_id"], *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out
        assert field in out.stderr, out.stderr
    for body, field in [({"rate_limit": {"requests": 10, "per": "fortnight"}}, "rate_limit.per"),
                        ({"rate_limit": {"requests": -1, "per": "second"}}, "rate_limit.requests"),
                        ({"rate_limit": {"requests": 5, "per": "second", "burst": 0}}, "rate_limit.burst"),
                        ({"rate_limit": {"requests": 5, "per": "second", "window": 3}}, "rate_limit.window")]:
        status, answer = post(ctl, f"/v1/keys/{limited['key_id']}/rate-limit", body)
        assert status == 400, answer
        assert answer["error"]["message"].startswith(field), answer
    assert ctl.store_status()["version"] == version

    # Every change in the audit trail, with its actor.
    events = [e for e in ctl.cli("audit", "--account", account)["events"]
              if e["action"] == "key.rate_limit_set"]
    seen = sorted((e["actor"]["kind"], e["detail"].split("; ")[-1]) for e in events)
    assert seen == [("admin_token", "rate limit 50 per minute, burst 50"),
                    ("cli", "rate limit 2 per minute, burst 2"),
                    ("cli", "rate limit removed")], seen
    assert all(e["key_ids"] == [limited["key_id"]] for e in events)


def refused_over(client, key):
    """Waits until `key` gets 429 (each refused request costs nothing), and answers that 429."""
    wait_for(lambda: statuses(client, key, 1) == [429], timeout=DEADLINE_S)
    return client.get("/v3/devices", headers={"authorization": f"token {key}"})


def test_an_account_default_limits_its_keys_a_keys_own_limit_wins_and_a_removed_default_lifts(
        stack):
    ctl, envoy = stack
    account, keys = ctl.create_account()
    other, other_keys = ctl.create_account()
    first, second = keys["sk_test"]["key"], keys["sk_production"]["key"]
    with httpx.Client(base_url=envoy.url, timeout=5) as client:
        wait_for(lambda: statuses(client, first, 1) == [200], timeout=DEADLINE_S)

        # Set with the CLI: 2 a minute for every key of the account.
        shown = ctl.cli("account", "limit", account, "--requests", "2", "--per", "minute")
        assert shown["id"] == account
        assert shown["rate_limit"] == {"requests": 2, "per": "minute"}
        assert ctl.cli("account", "show", account)["account"]["rate_limit"] == shown["rate_limit"]
        synced(ctl, envoy)
        for key in (first, second):
            refused = refused_over(client, key)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            assert refused.headers["ratelimit-policy"] == '"keygate";q=2;w=60'
        assert statuses(client, other_keys["sk_test"]["key"], 5) == [200] * 5, "another account"

        # A key's own limit wins: 50 a minute for the first key, the default for the rest.
        status, answer = post(ctl, f"/v1/keys/{keys['sk_test']['key_id']}/rate-limit",
                              {"rate_limit": {"requests": 50, "per": "minute", "burst": 50}})
        assert status == 200, answer
        synced(ctl, envoy)
        wait_for(lambda: statuses(client, first, 1) == [200], timeout=DEADLINE_S)
        burst = statuses(client, first, 60)
        assert burst.count(200) >= 40 and burst.index(429) >= 40, burst
        # The default still holds the others: its burst is 2, so 3 in a row cannot all pass.
        assert 429 in statuses(client, second, 3)

        # Removed over the API: the account's other keys are never limited again; the first
        # key keeps its own limit.
        status, answer = post(ctl, f"/v1/accounts/{account}/rate-limit", {"rate_limit": None})
        assert status == 200, answer
        assert answer["id"] == account and answer["rate_limit"] is None
        synced(ctl, envoy)
        # Five in a row: impossible under the default (exhausted, one back every 30 s).
        wait_for(lambda: statuses(client, second, 5) == [200] * 5, timeout=DEADLINE_S)
        assert statuses(client, second, 100) == [200] * 100
        assert 429 in statuses(client, first, 100), "the key's own limit stays"

    # Bad values: refused with the field named (as for a key), nothing changed.
    version = ctl.store_status()["version"]
    for argv, field in [(["--requests", "0", "--per", "second"], "rate_limit.requests"),
                        (["--requests", "10", "--per", "hour"], "rate_limit.per"),
                        (["--requests", "10", "--per", "second", "--burst", "2000000"],
                         "rate_limit.burst")]:
        out = subprocess.run([str(CTL), "--database", str(ctl.db), "account", "limit", account,
                              *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out
        assert field in out.stderr, out.stderr
    for body, field in [({"rate_limit": {"requests": 10, "per": "fortnight"}}, "rate_limit.per"),
                        ({"rate_limit": {"requests": -1, "per": "second"}}, "rate_limit.requests"),
                        ({"rate_limit": {"requests": 5, "per": "second", "burst": 0}}, "rate_limit.burst"),
                        ({"rate_limit": {"requests": 5, "per": "second", "window": 3}}, "rate_limit.window"),
                        ({"rate_limit": {"per": "second"}}, "rate_limit.requests"),
                        ({"rate_limit": "10/s"}, "rate_limit")]:
        status, answer = post(ctl, f"/v1/accounts/{account}/rate-limit", body)
        assert status == 400, answer
        assert answer["error"]["message"].startswith(field), answer
    status, answer = post(ctl, "/v1/accounts/acct_missing/rate-limit", {"rate_limit": None})
    assert status == 404, answer
    assert ctl.store_status()["version"] == version

    # Every change in the audit trail, with its actor; the other account has none.
    events = [e for e in ctl.cli("audit", "--account", account)["events"]
              if e["action"] == "account.rate_limit_set"]
    seen = sorted((e["actor"]["kind"], e["detail"]) for e in events)
    assert seen == [("admin_token", "default rate limit removed"),
                    ("cli", "default rate limit 2 per minute, burst 2")], seen
    assert not [e for e in ctl.cli("audit", "--account", other)["events"]
                if e["action"] == "account.rate_limit_set"]
