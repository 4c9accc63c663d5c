def test_secret_key_reaches_upstream(client, keyset, upstream):
    r = client.get("/v3/devices", headers={"authorization": f"token {keyset.keys['sk_test']}"})
    assert r.status_code == 200, r.text
    seen = upstream.take()
    assert len(seen) == 1
    headers = dict(seen[0]["headers"])
    assert headers["x-keygate-account-id"] == "acct_demo"
    assert "authorization" not in headers


def test_missing_key_is_401(client, upstream):
    r = client.get("/v3/devices")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_credentials"
    assert "Token realm=" in r.headers["www-authenticate"]
    assert upstream.take() == []
