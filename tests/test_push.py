"""Push mode through a real Envoy (2 workers): the filter config, key map included, arrives
by extension config discovery from a watched file; a new file replaces the map on every
worker without a restart; a bad push is refused and the last good config keeps serving."""

import json
import os
import time

import httpx
import pytest
import yaml

import harness
import keys as keylib
from controlplane import ScriptedControlPlane


def write_resource(path, plugin):
    """Atomically replaces the ECDS file, as `keygatectl export --output` does."""
    resource = harness.load_example("keygate-filter.yaml")
    if harness.NATIVE_MODE:
        resource["resources"][0]["typed_config"] = harness.native_filter(json.dumps(plugin))
    else:
        wasm = resource["resources"][0]["typed_config"]["config"]
        wasm["vm_config"]["code"]["local"]["filename"] = str(harness.WASM)
        wasm["configuration"]["value"] = json.dumps(plugin)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(resource))
    os.replace(tmp, path)


def start_push_envoy(upstream, plugin):
    config = harness.load_example("envoy-ecds.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(), 8081: upstream.server_address[1]}
    config = harness.localize(config, ports)
    envoy = harness.Envoy(config, concurrency=2)
    ecds_dir = envoy.dir / "ecds"
    ecds_dir.mkdir()
    envoy.ecds_file = ecds_dir / "keygate-filter.yaml"
    for d in harness.walk(config):
        if "path_config_source" in d:
            d["path_config_source"]["path"] = str(envoy.ecds_file)
            d["path_config_source"]["watched_directory"]["path"] = str(ecds_dir)
    write_resource(envoy.ecds_file, plugin)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


def status_of(envoy, key):
    headers = {"authorization": f"token {key}", "connection": "close"}
    return httpx.get(envoy.url + "/v3/devices", headers=headers, timeout=5).status_code


def all_workers(envoy, key, n=None):
    """The statuses Envoy's workers answer `key` with, asked on a connection pinned to each
    worker (`n`, the number of samples this once took, is no longer needed)."""
    with harness.connections_on_every_worker(envoy) as workers:
        return {status for status, _ in workers.answers(key).values()}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_pushed_config_replaces_the_map_on_every_worker(upstream, keyset):
    old, new = keyset.keys["sk_test"], keylib.make_key()
    envoy = start_push_envoy(upstream, {"version": 1, "keys": keyset.entries})
    try:
        with harness.connections_on_every_worker(envoy) as workers:
            assert workers.everywhere(old) == {(200, None)}
            assert workers.everywhere(new) == {(401, "invalid_api_key")}
            rolled = [e for e in keyset.entries if e["digest"] != keylib.digest(old)]
            rolled.append(keylib.entry(new, "acct_demo", "key_new", "secret", "test"))
            write_resource(envoy.ecds_file, {"version": 1, "keys": rolled})
            wait_for(lambda: workers.everywhere(old) == {(401, "invalid_api_key")}
                     and workers.everywhere(new) == {(200, None)})
        # The replaced configuration (and its key map) is freed (in every worker's VM, or
        # once for the native module's one copy), not kept for the life of the process.
        copies = 1 if harness.NATIVE_MODE else 2
        wait_for(lambda: envoy.read_log().count("keygate: released 1 ended configuration")
                 >= copies)
        assert all_workers(envoy, new) == {200}
    finally:
        envoy.stop()


def test_a_bad_push_is_refused_and_the_last_good_config_keeps_serving(upstream, keyset):
    key = keyset.keys["sk_test"]
    envoy = start_push_envoy(upstream, {"version": 1, "keys": keyset.entries})
    try:
        bad = {"version": 1, "keys": [dict(keyset.entries[0], digest=key)]}  # a plaintext key
        write_resource(envoy.ecds_file, bad)
        wait_for(lambda: "keys[0].digest: looks like a plaintext API key" in envoy.read_log())
        time.sleep(0.3)
        assert all_workers(envoy, key) == {200}
        assert key not in envoy.read_log()
    finally:
        envoy.stop()


@pytest.mark.skipif(not harness.NATIVE_MODE, reason="the native module's sync groups")
def test_a_pushed_sync_config_serves_the_synced_map_at_once_even_with_keygatectl_down(
        upstream, keyset):
    """A pushed update of a native sync-mode config joins the running sync thread and its
    map instead of starting empty (which would answer 503 until its first poll)."""
    cp = ScriptedControlPlane()
    cp.publish(keyset.entries)
    sync = {"url": f"http://127.0.0.1:{cp.port}/v1/keymap", "interval_ms": 200,
            "timeout_ms": 500}
    key = keyset.keys["sk_test"]
    envoy = start_push_envoy(upstream, {"version": 1, "realm": "first", "sync": sync})
    try:
        wait_for(lambda: all_workers(envoy, key) == {200})
        cp.down = True
        write_resource(envoy.ecds_file, {"version": 1, "realm": "pushed", "sync": sync})
        wait_for(lambda: 'realm="pushed"' in httpx.get(
            envoy.url + "/v3/devices", headers={"connection": "close"}, timeout=5
        ).headers.get("www-authenticate", ""))
        assert all_workers(envoy, key) == {200}
        assert all_workers(envoy, keylib.make_key()) == {401}
    finally:
        envoy.stop()
        cp.close()
