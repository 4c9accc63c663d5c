"""The key lifecycle end to end: real keygatectl (SQLite), real Envoy with 2 workers syncing
from it, the recording upstream. Create, roll (now and with a grace period), revoke,
disable; keygatectl down and back."""

import subprocess
import time

import httpx
import pytest

import harness
from ctl import CTL, Keygatectl

INTERVAL_MS = 200


def start_envoy(upstream, ctl, **settings):
    """Envoy watching `ctl` (fetcher `settings` over the suite's)."""
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: ctl.port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": INTERVAL_MS, "timeout_ms": 500, "bearer_token": ctl.sync_token})
    service.update(settings)
    harness.set_service_config(config, service)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


def answer(envoy, key, path="/v3/devices"):
    """(status, error code) of one request on a fresh connection (any worker may take it)."""
    r = httpx.get(envoy.url + path, headers={"authorization": f"token {key}", "connection": "close"}, timeout=5)
    code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
    return r.status_code, code


def wait_for(predicate, timeout=8.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def stack(request, upstream):
    # Finalizers, not code after a yield: each process is stopped even when a later start
    # fails or another stop raises.
    ctl = Keygatectl().start()
    request.addfinalizer(ctl.stop)
    envoy = start_envoy(upstream, ctl)
    request.addfinalizer(envoy.stop)
    return ctl, envoy


def test_a_new_account_s_keys_work_through_envoy(stack, upstream):
    ctl, envoy = stack
    account, keys = ctl.create_account()
    wait_for(lambda: answer(envoy, keys["sk_test"]["key"])[0] == 200)
    with harness.connections_on_every_worker(envoy) as workers:
        for name in ("sk_test", "sk_production"):
            assert workers.everywhere(keys[name]["key"]) == {(200, None)}
        for name in ("pk_test", "pk_production"):
            assert workers.everywhere(keys[name]["key"]) == {(403, "insufficient_permissions")}
            assert workers.everywhere(keys[name]["key"], "/v3/devices/dev_1") == {(200, None)}
    seen = dict(upstream.take()[-1]["headers"])
    assert seen["x-keygate-account-id"] == account


# "On every worker" below is proven per worker: one keep-alive connection pinned to each of
# Envoy's workers (harness.connections_on_every_worker), every check asked on each.

def test_roll_now_old_key_refused_new_key_accepted_on_every_worker(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    old = keys["sk_test"]
    wait_for(lambda: answer(envoy, old["key"])[0] == 200)
    with harness.connections_on_every_worker(envoy) as workers:
        assert workers.everywhere(old["key"]) == {(200, None)}
        rolled = ctl.api("POST", f"/v1/keys/{old['key_id']}/roll", {})
        new = rolled["new_key"]["key"]
        first = wait_for(lambda: (401, "invalid_api_key") in workers.everywhere(old["key"]))
        elapsed = wait_for(lambda: workers.everywhere(old["key"]) == {(401, "invalid_api_key")}
                           and workers.everywhere(new) == {(200, None)})
    print(f"\nold key first refused {first * 1000:.0f} ms after the roll; refused on each of "
          f"{envoy.concurrency} workers {elapsed * 1000:.0f} ms later (poll interval {INTERVAL_MS} ms)")
    # How fast is measured and printed here, and benchmarked in `make bench`; a timed
    # assertion would only make this test flaky on a loaded machine.


def test_roll_with_a_grace_period(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    old = keys["sk_production"]
    wait_for(lambda: answer(envoy, old["key"])[0] == 200)
    with harness.connections_on_every_worker(envoy) as workers:
        rolled = ctl.api("POST", f"/v1/keys/{old['key_id']}/roll", {"expires_in_seconds": 2})
        new = rolled["new_key"]["key"]
        wait_for(lambda: workers.everywhere(new) == {(200, None)})
        assert workers.everywhere(old["key"]) == {(200, None)}, \
            "the old key works during the grace period"
        # The end of the grace period: refused by each worker (expired by its own clock,
        # or gone from the map once keygatectl purged it).
        wait_for(lambda: workers.everywhere(old["key"])
                 <= {(401, "expired_api_key"), (401, "invalid_api_key")}, timeout=6)
        assert workers.everywhere(new) == {(200, None)}


def test_revoke_disable_enable(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    sk, pk = keys["sk_test"], keys["pk_test"]
    wait_for(lambda: answer(envoy, sk["key"])[0] == 200)
    with harness.connections_on_every_worker(envoy) as workers:
        assert workers.everywhere(pk["key"], "/v3/devices/d1") == {(200, None)}
        ctl.api("POST", f"/v1/keys/{sk['key_id']}/disable")
        wait_for(lambda: workers.everywhere(sk["key"]) == {(401, "disabled_api_key")})
        ctl.api("POST", f"/v1/keys/{sk['key_id']}/enable")
        wait_for(lambda: workers.everywhere(sk["key"]) == {(200, None)})
        ctl.api("POST", f"/v1/keys/{pk['key_id']}/revoke")
        wait_for(lambda: workers.everywhere(pk["key"], "/v3/devices/d1")
                 == {(401, "invalid_api_key")})


def test_keygatectl_down_keeps_the_last_map_and_envoy_catches_up(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    sk = keys["sk_test"]
    wait_for(lambda: answer(envoy, sk["key"])[0] == 200)
    with harness.connections_on_every_worker(envoy) as workers:
        ctl.stop()
        wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0) >= 1)
        assert workers.everywhere(sk["key"]) == {(200, None)}
        # Changed on the database while the server is down, then the server comes back.
        rolled = ctl.cli("key", "roll", sk["key_id"])
        ctl.start(port=ctl.port)
        wait_for(lambda: workers.everywhere(sk["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(rolled["new_key"]["key"]) == {(200, None)})


def test_no_wrong_decision_while_keys_roll(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    steady = keys["sk_test"]["key"]
    churn = keys["sk_production"]
    wait_for(lambda: answer(envoy, steady)[0] == 200)
    total = failures = rolls = 0
    deadline = time.monotonic() + 3
    with httpx.Client(base_url=envoy.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if total % 15 == 0:
                churn = ctl.api("POST", f"/v1/keys/{churn['key_id']}/roll", {})["new_key"]
                rolls += 1
            r = client.get("/v3/devices", headers={"authorization": f"token {steady}"})
            total += 1
            failures += r.status_code != 200
    assert rolls >= 5 and total >= 60
    assert failures == 0


def test_keygatectl_serves_the_full_map_binary_to_the_fetcher(stack):
    ctl, envoy = stack
    ctl.create_account()
    status, headers, body = ctl.key_map(headers={"accept": "application/x-keygate-map, application/json"})
    assert status == 200
    assert headers["content-type"] == "application/x-keygate-map"
    assert body.startswith(b"KGMAP01\n")
    assert int.from_bytes(body[16:20], "little") == 4
    status, headers, _ = ctl.key_map("since=0")
    assert headers["content-type"] == "application/json"


def test_the_key_map_needs_the_sync_token_and_a_refused_filter_keeps_its_last_map(stack):
    ctl, envoy = stack
    _, keys = ctl.create_account()
    old = keys["sk_test"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(old["key"]) == {(200, None)})
        # Without the sync token the key map stays closed.
        r = httpx.get(f"http://127.0.0.1:{ctl.port}/v1/keymap", timeout=5)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        # The token is rotated under the running filter: its polls are refused from now on.
        errors = envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
        out = subprocess.run([str(CTL), "--database", str(ctl.db), "sync-token", "rotate",
                              "--sync-token-file", str(ctl.sync_token_file)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: "refused a wrong sync token" in ctl.read_log())
        wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0) > errors)
        # It keeps serving the last map it got, and a key made since never reaches it: two
        # more polls refused after the key was made.
        _, later = ctl.create_account()
        refused = envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
        wait_for(lambda: envoy.counters(harness.STATS + "keygate.sync.").get("errors", 0)
                 >= refused + 2)
        assert workers.everywhere(old["key"]) == {(200, None)}
        assert workers.everywhere(later["sk_test"]["key"]) == {(401, "invalid_api_key")}


def test_a_restored_backup_is_served_and_the_fleet_takes_it(stack):
    """keygatectl's database restored from a backup under a running server: every worker
    serves the restored map (keys made after the backup refused, keys rolled after it back),
    and later changes still reach the fleet (no version the filters would refuse)."""
    ctl, envoy = stack
    _, before = ctl.create_account()
    old = before["sk_test"]
    wait_for(lambda: answer(envoy, old["key"])[0] == 200)
    backup = ctl.backup()
    _, after = ctl.create_account()
    rolled = ctl.api("POST", f"/v1/keys/{old['key_id']}/roll", {})["new_key"]["key"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(after["sk_test"]["key"]) == {(200, None)}
                 and workers.everywhere(old["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(rolled) == {(200, None)})
        ctl.restore(backup)
        wait_for(lambda: workers.everywhere(old["key"]) == {(200, None)}
                 and workers.everywhere(rolled) == {(401, "invalid_api_key")}
                 and workers.everywhere(after["sk_test"]["key"]) == {(401, "invalid_api_key")},
                 timeout=15)
        # The restored store goes on: a roll made now reaches every worker.
        again = ctl.api("POST", f"/v1/keys/{old['key_id']}/roll", {})["new_key"]["key"]
        wait_for(lambda: workers.everywhere(old["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(again) == {(200, None)}, timeout=15)
