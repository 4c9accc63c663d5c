"""Faults of Envoy itself: a trapped wasm VM (a test-only build traps on request) under the
examples' `failure_policy: FAIL_RELOAD`, and an Envoy restart. Never an open door."""

import time

import httpx
import pytest

import harness
from conftest import start_envoy

FAULT_WASM = harness.ROOT / "target" / "keygate-fault.wasm"


@pytest.fixture
def fault_gate(upstream, keyset, monkeypatch):
    if not FAULT_WASM.exists():
        pytest.fail(f"{FAULT_WASM} is missing: `make build` makes it")
    monkeypatch.setattr(harness, "WASM", FAULT_WASM)
    envoy = start_envoy(upstream, keyset=keyset, concurrency=1)
    yield envoy
    envoy.stop()


def request(envoy, key, extra=None):
    headers = {"authorization": f"token {key}", **(extra or {})}
    try:
        return httpx.get(envoy.url + "/v3/devices", headers=headers, timeout=5).status_code
    except httpx.HTTPError:
        return "reset"


def test_a_trapped_vm_answers_503_then_recovers_and_never_lets_a_bad_key_in(fault_gate, keyset, upstream):
    valid, invalid = keyset.keys["sk_test"], "sk_test_not_a_key"
    assert request(fault_gate, valid) == 200
    trapped = request(fault_gate, valid, {"x-keygate-fault": "trap"})
    assert trapped in (500, 503, "reset")
    seen_while_failed = set()
    recovered = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert request(fault_gate, invalid) != 200, "a failed VM must never open the door"
        status = request(fault_gate, valid)
        if status == 200:
            recovered = True
            break
        seen_while_failed.add(status)
        time.sleep(0.1)
    assert recovered, f"no recovery after the trap; saw {seen_while_failed}"
    assert seen_while_failed <= {503, 500}
    assert request(fault_gate, invalid) == 401
    log = fault_gate.read_log()
    # The module's panic handler logs where it panicked (never the message: a message could
    # quote input), then traps.
    assert "keygate: panic at src/filter.rs:" in log, log[-2000:]
    assert "unreachable" in log.lower()
    assert valid not in log
    upstream.take()


def test_envoy_restarted_serves_the_same_keys(upstream, keyset):
    envoy = start_envoy(upstream, keyset=keyset)
    key = keyset.keys["sk_test"]
    try:
        assert request(envoy, key) == 200
        envoy.stop()
        envoy.start()
        assert request(envoy, key) == 200
        assert request(envoy, "sk_test_nope") == 401
    finally:
        envoy.stop()
