"""Defences beyond the key check: method overrides, underscore aliases of identity headers,
and what a refused client can put in the access log."""

import httpx


def test_a_method_override_cannot_widen_a_publishable_key(client, keyset, upstream):
    pk = keyset.keys["pk_test"]
    auth = {"authorization": f"token {pk}"}
    r = client.get("/v3/devices/dev_1", headers={**auth, "x-http-method-override": "DELETE"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_permissions"
    r = client.get("/v3/devices/dev_1", headers={**auth, "x-http-method-override": "HEAD"})
    assert r.status_code == 200
    sk = keyset.keys["sk_test"]
    r = client.get("/v3/devices", headers={"authorization": f"token {sk}", "x-method-override": "DELETE"})
    assert r.status_code == 200, "secret keys may make every call anyway"
    assert len(upstream.take()) == 2


def test_underscore_aliases_of_identity_headers_are_refused_by_envoy(client, keyset, upstream):
    sk = keyset.keys["sk_test"]
    headers = {"authorization": f"token {sk}", "x_keygate_account_id": "acct_victim"}
    try:
        status = client.get("/v3/devices", headers=headers).status_code
    except httpx.RemoteProtocolError:
        status = "reset"  # HTTP/2: Envoy resets the stream
    assert status in (400, "reset")
    assert upstream.take() == []


def test_a_refused_request_logs_no_client_sent_identity(client, gate, upstream):
    spoof = {"x-keygate-account-id": "acct_victim", "x-keygate-key-id": "key_victim"}
    r = client.get("/v3/devices/logcheck", headers={"authorization": "token sk_test_unknown", **spoof})
    assert r.status_code == 401
    lines = gate.access_log(lambda e: e.get("path") == "/v3/devices/logcheck", 1, 5)
    assert lines[0]["account_id"] is None and lines[0]["key_id"] is None
    assert upstream.take() == []
