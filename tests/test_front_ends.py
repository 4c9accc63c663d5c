"""The two front ends give the same answers: one Envoy with the wasm filter and one with the
native module, the same configuration and keys, the same requests; the statuses, bodies and
keygate's headers must match byte for byte, and the upstream must see the same identity."""

import copy

import httpx
import pytest

import harness
import keys as keylib
from conftest import KeySet

REQUESTS = [
    # (name, method, path, headers)
    ("allowed secret", "GET", "/v3/devices", {"authorization": "token {sk_test}"}),
    ("allowed publishable", "GET", "/v3/devices/abc", {"authorization": "Bearer {pk_test}"}),
    ("allowed, spoofed identity", "GET", "/v3/devices", {
        "authorization": "token {sk_production}", "x-keygate-account-id": "acct_evil",
        "x-keygate-identity": "account-id=\"acct_evil\""}),
    ("missing", "GET", "/v3/devices", {}),
    ("malformed", "GET", "/v3/devices", {"authorization": "token"}),
    ("two credentials", "GET", "/v3/devices", {"authorization": "token a, token b"}),
    ("unknown", "GET", "/v3/devices", {"authorization": "token {unknown}"}),
    ("expired", "GET", "/v3/devices", {"authorization": "token {expired}"}),
    ("disabled", "GET", "/v3/devices", {"authorization": "token {disabled}"}),
    ("forbidden", "DELETE", "/v3/devices/1", {"authorization": "token {pk_production}"}),
    ("forbidden override", "GET", "/v3/devices/1?_method=DELETE",
     {"authorization": "token {pk_production}"}),
]

KEYGATE_HEADERS = ("content-type", "content-length", "www-authenticate", "retry-after")


@pytest.fixture(scope="module")
def keyset():
    ks = KeySet()
    ks.add("expired", keylib.make_key(), key_type="secret", environment="test",
           expires_at=1_000_000_000)
    ks.add("disabled", keylib.make_key(), key_type="secret", environment="test", disabled=True)
    ks.keys["unknown"] = keylib.make_key()
    return ks


def start(config, native):
    if native:
        config = harness.nativize(copy.deepcopy(config))
    envoy = harness.Envoy(config)
    envoy.start()
    return envoy


def localized_wasm(upstream, keyset, monkeypatch):
    """The static example as the wasm filter runs it, whichever front end this pass tests."""
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1]}
    monkeypatch.setattr(harness, "NATIVE_MODE", False)
    config = harness.localize(harness.load_example("envoy.yaml"), ports)
    monkeypatch.undo()
    plugin = harness.plugin_config(config)
    plugin["keys"] = keyset.entries
    harness.set_plugin_config(config, plugin)
    return config, ports[10000]


# What differs between any two Envoys whatever their filter.
PER_ENVOY = ("host", "x-request-id")


def seen_by(upstream, url, method, path, headers):
    """The status, keygate's headers and body of a refusal (an allowed call's body is the
    upstream's echo), and the headers the upstream received, in order."""
    upstream.take()
    r = httpx.request(method, url + path, headers=headers, timeout=5)
    seen = upstream.take()
    forwarded = [[(n, v) for n, v in s["headers"] if n not in PER_ENVOY] for s in seen]
    kept = {h: r.headers.get_list(h) for h in KEYGATE_HEADERS if r.status_code != 200}
    body = r.content if r.status_code != 200 else b""
    return r.status_code, body, kept, forwarded


def test_both_front_ends_answer_byte_for_byte_alike(upstream, keyset, monkeypatch):
    if harness.NATIVE_MODE:
        pytest.skip("starts both front ends itself: runs in the wasm pass")
    wasm_config, wasm_port = localized_wasm(upstream, keyset, monkeypatch)
    native_config, native_port = localized_wasm(upstream, keyset, monkeypatch)
    wasm = start(wasm_config, native=False)
    try:
        native = start(native_config, native=True)
        try:
            for name, method, path, headers in REQUESTS:
                headers = {k: v.format(**keyset.keys) for k, v in headers.items()}
                a = seen_by(upstream, f"http://127.0.0.1:{wasm_port}", method, path, headers)
                b = seen_by(upstream, f"http://127.0.0.1:{native_port}", method, path, headers)
                assert a == b, f"{name}: wasm {a} != native {b}"
                assert a[0] in (200, 401, 403), (name, a)
        finally:
            native.stop()
    finally:
        wasm.stop()
