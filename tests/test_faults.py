"""Faults of Envoy itself: a trapped wasm VM (a test-only build traps on request) under the
examples' `failure_policy: FAIL_RELOAD` (native module: a panic in the request path, caught
at the hook), and an Envoy restart. Never an open door."""

import time

import httpx
import pytest

import harness
from conftest import start_envoy

FAULT_WASM = harness.ROOT / "target" / "keygate-fault.wasm"
FAULT_NATIVE = harness.ROOT / "target" / "libkeygate_native-fault.so"


@pytest.fixture
def fault_gate(upstream, keyset, monkeypatch):
    module, attribute = (FAULT_NATIVE, "NATIVE") if harness.NATIVE_MODE else (FAULT_WASM, "WASM")
    if not module.exists():
        pytest.fail(f"{module} is missing: `make build` makes it")
    monkeypatch.setattr(harness, attribute, module)
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
    # quote input), then traps (native: the hook catches it and answers 500).
    if harness.NATIVE_MODE:
        assert trapped == 500
        assert "keygate: panic at core/src/gate.rs:" in log, log[-2000:]
        assert "keygate: internal error on a request; answered 500" in log
        assert "fault injection" not in log
    else:
        assert "keygate: panic at core/src/gate.rs:" in log, log[-2000:]
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
