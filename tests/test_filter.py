"""keygate's features as a user sees them, through a real Envoy over HTTP/1.1 and HTTP/2:
what each key kind may do, the accepted schemes, the 401/403 answers, environment binding,
the identity handed to the upstream, stats, access logs, and configs Envoy must refuse.

Every test checks both sides: what the client got (status, JSON `error.code`, headers) and
what the recording upstream received (nothing at all for a refused request)."""

import base64
import json
import socket
import time
import uuid

import httpx
import pytest

import harness
import keys
from conftest import PROTOCOLS, GatePool, KeySet, http_client, start_envoy

REALM = "api"  # the example config's realm
ALL_CHALLENGES = f'Token realm="{REALM}", Bearer realm="{REALM}", Basic realm="{REALM}"'
IDENTITY = ("x-keygate-account-id", "x-keygate-key-id", "x-keygate-key-type",
            "x-keygate-environment")

# The four kinds of key in the default key set: name → (type, environment).
KINDS = {
    "sk_test": ("secret", "test"),
    "pk_test": ("publishable", "test"),
    "sk_production": ("secret", "production"),
    "pk_production": ("publishable", "production"),
}
EPOCH_2001 = 1_000_000_000


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyset():
    """The four keys of acct_demo plus the special cases the tests need."""
    ks = KeySet()
    ks.add("expired", keys.make_key("secret", "test"), key_type="secret", environment="test",
           expires_at=EPOCH_2001)
    ks.add("disabled", keys.make_key("secret", "test"), key_type="secret", environment="test",
           disabled=True)
    ks.add("expiring_later", keys.make_key("publishable", "production"), key_type="publishable",
           environment="production", expires_at=int(time.time()) + 10 * 365 * 86400)
    # A pk_test_ key whose entry says secret: a prefix that disagrees with its entry.
    ks.add("pk_listed_secret", keys.make_key("publishable", "test"), key_type="secret",
           environment="test")
    # An sk_test_ key whose entry says production.
    ks.add("test_listed_production", keys.make_key("secret", "test"), key_type="secret",
           environment="production")
    ks.add("other_account", keys.make_key("secret", "test"), key_type="secret",
           environment="test", account_id="acct_other")
    # A key issued before checksums existed: looked up by digest only.
    ks.add("legacy", "sk_test_legacy4f6b2a0c9d8e", key_type="secret", environment="test")
    return ks


@pytest.fixture(scope="module")
def upstream(module_upstream):
    return module_upstream


@pytest.fixture(scope="module")
def pool(upstream, keyset):
    p = GatePool(upstream, keyset)
    yield p
    logs = {name: envoy.read_log() for name, envoy in p.started.items()}
    p.stop()
    # Whatever happened in this module, no plaintext key reached any Envoy log.
    for name, log in logs.items():
        for key_name, key in keyset.keys.items():
            assert key not in log, f"key {key_name} appears in the log of the gate {name}"


@pytest.fixture(scope="module")
def gate(pool):
    """The example config as shipped, with the module's keys."""
    return pool.get()


@pytest.fixture(autouse=True)
def drained(upstream):
    """Each test starts with an upstream that has seen nothing."""
    upstream.take()
    yield


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture
def client(protocol, gate):
    with http_client(protocol, gate.url) as c:
        yield c


# --- helpers ------------------------------------------------------------------------------


def b64(text):
    return base64.b64encode(text.encode()).decode()


def token(key):
    return {"authorization": f"token {key}"}


def call(client, method, path, headers=None, raw=False):
    """One request; with `raw`, the path goes on the wire exactly as written (httpx would
    otherwise resolve dot segments and read `//x` as a host)."""
    extensions = {"target": path.encode()} if raw else None
    return client.request(method, "/" if raw else path, headers=headers, extensions=extensions)


def assert_refused(r, upstream, status, code, challenge=ALL_CHALLENGES, method="GET"):
    """A keygate refusal: status, JSON body {"error": {"code", "message"}}, the challenge on
    401s only, and nothing at the upstream."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    if method != "HEAD":
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] == code, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if status == 401:
        assert r.headers.get_list("www-authenticate") == [challenge]
    else:
        assert "www-authenticate" not in r.headers
    assert upstream.take() == [], "a refused request reached the upstream"


def forwarded(r, upstream, method=None, path=None):
    """The one request the upstream received for an allowed call, with its headers as a list
    of (name, value)."""
    assert r.status_code == 200, (r.status_code, r.text)
    seen = upstream.take()
    assert len(seen) == 1, seen
    if method is not None:
        assert seen[0]["method"] == method
    if path is not None:
        assert seen[0]["path"] == path
    return seen[0]["headers"]


def values(headers, name):
    return [v for n, v in headers if n == name]


def assert_identity(headers, keyset, name, names=IDENTITY):
    """Exactly one of each identity header, with keygate's values for key `name`."""
    entry = next(e for e in keyset.entries if e["key_id"] == f"key_{name}")
    want = [entry["account_id"], entry["key_id"], entry["type"], entry["environment"]]
    for header, value in zip(names, want):
        assert values(headers, header) == [value], (header, headers)


def typo(key):
    """The key with one character of its random part changed (still base62)."""
    i = len(key) - 10
    return key[:i] + ("a" if key[i] != "a" else "b") + key[i + 1:]


# --- key kinds ----------------------------------------------------------------------------

SECRET_CALLS = [
    ("GET", "/v3/devices"),
    ("GET", "/v3/devices/abc"),
    ("HEAD", "/v3/devices"),
    ("POST", "/v3/devices"),
    ("PUT", "/v3/devices/abc"),
    ("PATCH", "/v3/devices/abc"),
    ("DELETE", "/v3/devices/abc"),
    ("GET", "/v3/devices/abc/trips"),
    ("POST", "/v3/devices/abc/events"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users/42/"),
    ("GET", "/internal/reports?month=2024-01"),
]

PUBLISHABLE_ALLOWED = [
    ("GET", "/v3/devices/abc"),
    ("HEAD", "/v3/devices/abc"),
    ("GET", "/v3/devices/abc/"),
    ("GET", "/v3/users/u_42"),
    ("GET", "/api/v1/users/42/"),
    ("GET", "/api/v1/users/42"),
    ("HEAD", "/api/v1/users/42/"),
    ("POST", "/v3/devices/abc/events"),
    ("POST", "/v3/devices/d-9_x.y~z/events"),
]

PUBLISHABLE_FORBIDDEN = [
    ("GET", "/v3/devices"),  # a list
    ("GET", "/v3/devices/"),
    ("HEAD", "/v3/devices"),
    ("GET", "/api/v1/users/"),
    ("POST", "/v3/devices"),  # a create
    ("POST", "/api/v1/users"),
    ("PUT", "/v3/devices/abc"),  # updates
    ("PATCH", "/v3/devices/abc"),
    ("PATCH", "/api/v1/users/42/"),
    ("DELETE", "/v3/devices/abc"),  # a delete
    ("DELETE", "/api/v1/users/42/"),
    ("POST", "/v3/devices/abc"),
    ("GET", "/v3/devices/abc/trips"),  # nested objects
    ("GET", "/v3/devices/abc/events"),  # the SDK rule allows POST only
    ("PUT", "/v3/devices/abc/events"),
    ("DELETE", "/v3/devices/abc/events"),
    ("POST", "/v3/devices/abc/events/1"),
    ("POST", "/api/v1/devices/abc/events"),  # the SDK rule is under /v3 only
    ("POST", "/v3/users/abc/events"),
    ("OPTIONS", "/v3/devices/abc"),
    ("GET", "/v4/devices/abc"),  # outside the API prefixes
    ("GET", "/V3/devices/abc"),
    ("GET", "/v3"),
    ("GET", "/"),
]


@pytest.mark.parametrize("name", ["sk_test", "sk_production"])
@pytest.mark.parametrize("method,path", SECRET_CALLS)
def test_secret_keys_may_do_everything(client, keyset, upstream, name, method, path):
    r = call(client, method, path, token(keyset.keys[name]))
    headers = forwarded(r, upstream, method, path)
    assert_identity(headers, keyset, name)


@pytest.mark.parametrize("name", ["pk_test", "pk_production"])
@pytest.mark.parametrize("method,path", PUBLISHABLE_ALLOWED)
def test_publishable_keys_may_retrieve_and_send_events(client, keyset, upstream, name, method,
                                                      path):
    r = call(client, method, path, token(keyset.keys[name]))
    headers = forwarded(r, upstream, method, path)
    assert_identity(headers, keyset, name)


@pytest.mark.parametrize("name", ["pk_test", "pk_production"])
@pytest.mark.parametrize("method,path", PUBLISHABLE_FORBIDDEN)
def test_publishable_keys_may_not_list_create_update_or_delete(client, keyset, upstream, name,
                                                               method, path):
    r = call(client, method, path, token(keyset.keys[name]))
    assert_refused(r, upstream, 403, "insufficient_permissions", method=method)


# Path tricks with a publishable key, sent byte for byte. The decision is made on the path
# with dot segments resolved, empty segments dropped and escapes decoded; an encoded slash or
# a `;` parameter never matches a rule; the query string never changes the decision.
PATH_TRICKS = [
    # method, path as sent, status, path the upstream receives (for a 200)
    ("GET", "/v3/devices/abc/../", 403, None),  # = the list /v3/devices/
    ("GET", "/v3/devices/abc/..", 403, None),
    ("GET", "/v3/devices/abc/%2e%2e/", 403, None),
    ("GET", "/v3/devices/abc/../../devices", 403, None),
    ("GET", "//v3//devices", 403, None),
    ("GET", "//v3//devices//", 403, None),
    ("GET", "/v3/./devices", 403, None),
    ("GET", "//v3//devices//abc", 200, "/v3/devices/abc"),  # the same call as /v3/devices/abc
    ("GET", "/v3/./devices/./abc", 200, "/v3/devices/abc"),
    ("GET", "/v3/devices/abc/trips/..", 200, "/v3/devices/abc/"),
    ("GET", "/v3/devices/a%2Fb", 403, None),  # encoded slash inside the id
    ("GET", "/v3/devices/a%2fb", 403, None),
    ("GET", "/v3/devices%2Fabc", 403, None),
    ("GET", "/v3/devices/abc%2F", 403, None),
    ("POST", "/v3/devices/abc%2Fevents", 403, None),
    ("GET", "/v3/devices/abc;v=1", 403, None),  # path parameters
    ("GET", "/v3/devices;v=1/abc", 403, None),
    ("POST", "/v3/devices/abc;x/events", 403, None),
    ("GET", "/v3/devices/abc?expand=owner", 200, "/v3/devices/abc?expand=owner"),  # queries
    ("GET", "/v3/devices/abc?", 200, "/v3/devices/abc?"),
    ("GET", "/v3/devices/abc?next=/v3/devices", 200, "/v3/devices/abc?next=/v3/devices"),
    ("GET", "/v3/devices?id=abc", 403, None),
    ("GET", "/v3/devices?/abc", 403, None),
    ("GET", "/v3/devices/?abc", 403, None),
    ("POST", "/v3/devices/abc/events?type=/../../x", 200, "/v3/devices/abc/events?type=/../../x"),
    ("POST", "/v3/devices?x=/abc/events", 403, None),
    ("DELETE", "/v3/devices/abc?method=GET", 403, None),
]


@pytest.mark.parametrize("method,path,status,upstream_path", PATH_TRICKS)
def test_path_tricks_do_not_change_a_publishable_decision(client, keyset, upstream, method,
                                                          path, status, upstream_path):
    r = call(client, method, path, token(keyset.keys["pk_test"]), raw=True)
    if status == 403:
        assert_refused(r, upstream, 403, "insufficient_permissions")
    else:
        headers = forwarded(r, upstream, method, upstream_path)
        assert_identity(headers, keyset, "pk_test")


@pytest.mark.parametrize("path", ["/v3/devices/abc/../", "//v3//devices", "/v3/devices/a%2Fb",
                                  "/v3/devices/abc;v=1", "/v3/devices?id=abc"])
def test_path_tricks_are_passed_through_for_secret_keys(client, keyset, upstream, path):
    r = call(client, "GET", path, token(keyset.keys["sk_test"]), raw=True)
    assert_identity(forwarded(r, upstream, "GET"), keyset, "sk_test")


# --- schemes ------------------------------------------------------------------------------

SCHEME_FORMS = {
    "token": lambda k: f"token {k}",
    "Token": lambda k: f"Token {k}",
    "TOKEN": lambda k: f"TOKEN {k}",
    "Bearer": lambda k: f"Bearer {k}",
    "bearer": lambda k: f"bearer {k}",
    "bEaReR": lambda k: f"bEaReR {k}",
    "token, several spaces": lambda k: f"token     {k}",
    "Bearer, several spaces": lambda k: f"Bearer  {k}",
    "Basic key: (curl -u key:)": lambda k: f"Basic {b64(k + ':')}",
    "Basic :key": lambda k: f"Basic {b64(':' + k)}",
    "Basic account:key": lambda k: f"Basic {b64('acct_demo:' + k)}",
    "basic, lower case": lambda k: f"basic {b64(k + ':')}",
    "BASIC, upper case": lambda k: f"BASIC {b64('acct_demo:' + k)}",
    "Basic without padding": lambda k: f"Basic {b64(k + ':').rstrip('=')}",
    "Basic, several spaces": lambda k: f"Basic   {b64(k + ':')}",
}


@pytest.mark.parametrize("form", SCHEME_FORMS)
def test_every_scheme_form_authenticates(client, keyset, upstream, form):
    key = keyset.keys["sk_test"]
    value = SCHEME_FORMS[form](key)
    if form == "Basic without padding":
        assert value.endswith(b64(key + ":").rstrip("=")) and b64(key + ":").endswith("=")
    r = client.get("/v3/devices", headers={"authorization": value})
    assert_identity(forwarded(r, upstream, "GET", "/v3/devices"), keyset, "sk_test")


def test_basic_auth_as_curl_sends_it(client, keyset, upstream):
    """`curl -u sk_test_…:` sends Basic base64(key:), as httpx's BasicAuth(key, "") does."""
    r = client.get("/v3/devices", auth=httpx.BasicAuth(keyset.keys["sk_test"], ""))
    assert_identity(forwarded(r, upstream), keyset, "sk_test")


def test_basic_auth_with_the_account_as_user(client, keyset, upstream):
    auth = httpx.BasicAuth("acct_demo", keyset.keys["pk_production"])
    r = client.get("/v3/devices/abc", auth=auth)
    assert_identity(forwarded(r, upstream), keyset, "pk_production")


def test_basic_auth_for_another_accounts_key(client, keyset, upstream):
    r = client.get("/v3/devices", auth=httpx.BasicAuth("acct_other", keyset.keys["other_account"]))
    assert_identity(forwarded(r, upstream), keyset, "other_account")


@pytest.mark.parametrize("account", ["acct_other", "ACCT_DEMO", "acct_demo ", "acct_dem",
                                     "acct_demo_"])
def test_basic_auth_with_the_wrong_account_is_an_unknown_key(client, keyset, upstream, account):
    """The wrong account id gets exactly the answer an unknown key gets: nothing tells the
    caller that the key exists."""
    wrong = client.get("/v3/devices", headers={
        "authorization": f"Basic {b64(account + ':' + keyset.keys['sk_test'])}"})
    assert_refused(wrong, upstream, 401, "invalid_api_key")
    unknown = client.get("/v3/devices", headers=token(keys.make_key("secret", "test")))
    assert_refused(unknown, upstream, 401, "invalid_api_key")
    assert wrong.content == unknown.content


@pytest.mark.parametrize("name", ["disabled", "expired"])
def test_wrong_account_on_a_dead_key_does_not_reveal_its_state(client, keyset, upstream, name):
    r = client.get("/v3/devices", headers={
        "authorization": f"Basic {b64('acct_other:' + keyset.keys[name])}"})
    assert_refused(r, upstream, 401, "invalid_api_key")


@pytest.fixture
def token_only(pool, protocol):
    gate = pool.get(schemes=["token"])
    with http_client(protocol, gate.url) as c:
        yield c


def test_token_only_config_accepts_token(token_only, keyset, upstream):
    r = token_only.get("/v3/devices", headers=token(keyset.keys["sk_test"]))
    assert_identity(forwarded(r, upstream), keyset, "sk_test")


@pytest.mark.parametrize("form", ["Bearer", "bearer", "Basic key: (curl -u key:)",
                                  "Basic account:key"])
def test_token_only_config_refuses_other_schemes(token_only, keyset, upstream, form):
    r = token_only.get("/v3/devices",
                       headers={"authorization": SCHEME_FORMS[form](keyset.keys["sk_test"])})
    assert_refused(r, upstream, 401, "malformed_credentials", challenge=f'Token realm="{REALM}"')


def test_token_only_config_challenges_with_token_only(token_only, upstream):
    r = token_only.get("/v3/devices")
    assert_refused(r, upstream, 401, "missing_credentials", challenge=f'Token realm="{REALM}"')


def test_realm_and_schemes_shape_the_challenge(pool, protocol, keyset, upstream):
    gate = pool.get(schemes=["basic", "bearer"], realm="partner-api")
    with http_client(protocol, gate.url) as c:
        challenge = 'Bearer realm="partner-api", Basic realm="partner-api"'
        assert_refused(c.get("/v3/devices"), upstream, 401, "missing_credentials", challenge)
        r = c.get("/v3/devices", headers=token(keyset.keys["sk_test"]))
        assert_refused(r, upstream, 401, "malformed_credentials", challenge)
        r = c.get("/v3/devices", headers={"authorization": f"Bearer {keyset.keys['sk_test']}"})
        assert_identity(forwarded(r, upstream), keyset, "sk_test")


# --- 401 answers --------------------------------------------------------------------------

UNAUTHENTICATED = {
    # name: (authorization value built from the key set, or None for no header), code
    "no header": (None, "missing_credentials"),
    "empty header": (lambda ks: "", "missing_credentials"),
    "scheme alone": (lambda ks: "token", "malformed_credentials"),
    "unknown scheme": (lambda ks: f"Digest {ks.keys['sk_test']}", "malformed_credentials"),
    "no scheme": (lambda ks: ks.keys["sk_test"], "malformed_credentials"),
    "prefix alone": (lambda ks: "token sk_test_", "malformed_credentials"),
    "unknown key": (lambda ks: f"token {keys.make_key('secret', 'test')}", "invalid_api_key"),
    "unknown publishable key": (lambda ks: f"token {keys.make_key('publishable', 'production')}",
                                "invalid_api_key"),
    "unknown prefix": (lambda ks: "token xk_test_" + "a" * 38, "invalid_api_key"),
    "checksum typo": (lambda ks: f"token {typo(ks.keys['sk_test'])}", "invalid_api_key"),
    "checksum typo, Basic": (lambda ks: f"Basic {b64(typo(ks.keys['pk_production']) + ':')}",
                             "invalid_api_key"),
    "wrong checksum": (lambda ks: f"token {ks.keys['sk_production'][:-1]}"
                       f"{'0' if ks.keys['sk_production'][-1] != '0' else '1'}", "invalid_api_key"),
    "pk_test_ key listed as secret": (lambda ks: f"token {ks.keys['pk_listed_secret']}",
                                      "invalid_api_key"),
    "sk_test_ key listed as production": (
        lambda ks: f"token {ks.keys['test_listed_production']}", "invalid_api_key"),
    "expired key": (lambda ks: f"token {ks.keys['expired']}", "expired_api_key"),
    "expired key, Basic": (lambda ks: f"Basic {b64('acct_demo:' + ks.keys['expired'])}",
                           "expired_api_key"),
    "disabled key": (lambda ks: f"Bearer {ks.keys['disabled']}", "disabled_api_key"),
}


@pytest.mark.parametrize("case", UNAUTHENTICATED)
def test_401_answers(client, keyset, upstream, case):
    make, code = UNAUTHENTICATED[case]
    headers = {} if make is None else {"authorization": make(keyset)}
    r = client.get("/v3/devices/abc", headers=headers)
    assert_refused(r, upstream, 401, code)
    # The answer never echoes what was sent.
    for key in keyset.keys.values():
        assert key not in r.text


def test_401_body_is_exactly_code_and_message(client, upstream):
    r = client.get("/v3/devices")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    assert json.loads(r.content) == {"error": {
        "code": "missing_credentials",
        "message": r.json()["error"]["message"],
    }}
    assert upstream.take() == []


def test_a_key_expiring_later_works(client, keyset, upstream):
    r = client.get("/v3/devices/abc", headers=token(keyset.keys["expiring_later"]))
    assert_identity(forwarded(r, upstream), keyset, "expiring_later")


def test_a_key_without_checksum_works(client, keyset, upstream):
    r = client.get("/v3/devices", headers=token(keyset.keys["legacy"]))
    assert_identity(forwarded(r, upstream), keyset, "legacy")


def test_403_is_json_without_a_challenge(client, keyset, upstream):
    r = client.delete("/v3/devices/abc", headers=token(keyset.keys["pk_production"]))
    assert_refused(r, upstream, 403, "insufficient_permissions")


# --- environment binding ------------------------------------------------------------------

ENV_CASES = [
    # listener environment, key, method, path, expected status, code
    ("production", "sk_test", "GET", "/v3/devices", 403, "wrong_environment"),
    ("production", "pk_test", "GET", "/v3/devices/abc", 403, "wrong_environment"),
    ("production", "pk_test", "GET", "/v3/devices", 403, "wrong_environment"),
    ("production", "sk_production", "GET", "/v3/devices", 200, None),
    ("production", "sk_production", "DELETE", "/v3/devices/abc", 200, None),
    ("production", "pk_production", "GET", "/v3/devices/abc", 200, None),
    ("production", "pk_production", "GET", "/v3/devices", 403, "insufficient_permissions"),
    ("production", "expired", "GET", "/v3/devices", 401, "expired_api_key"),
    ("test", "sk_production", "GET", "/v3/devices", 403, "wrong_environment"),
    ("test", "pk_production", "GET", "/v3/devices/abc", 403, "wrong_environment"),
    ("test", "sk_test", "GET", "/v3/devices", 200, None),
    ("test", "pk_test", "POST", "/v3/devices/abc/events", 200, None),
]


@pytest.mark.parametrize("environment,name,method,path,status,code", ENV_CASES)
def test_environment_binding(pool, protocol, keyset, upstream, environment, name, method, path,
                             status, code):
    gate = pool.get(environment=environment)
    with http_client(protocol, gate.url) as c:
        r = call(c, method, path, token(keyset.keys[name]))
        if status == 200:
            assert_identity(forwarded(r, upstream, method, path), keyset, name)
        else:
            assert_refused(r, upstream, status, code)


# --- what the upstream receives -----------------------------------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_upstream_sees_the_identity_and_no_credential(client, keyset, upstream, name):
    r = client.get("/v3/devices/abc", headers=token(keyset.keys[name]))
    headers = forwarded(r, upstream, "GET", "/v3/devices/abc")
    key_type, environment = KINDS[name]
    assert values(headers, "x-keygate-account-id") == ["acct_demo"]
    assert values(headers, "x-keygate-key-id") == [f"key_{name}"]
    assert values(headers, "x-keygate-key-type") == [key_type]
    assert values(headers, "x-keygate-environment") == [environment]
    assert values(headers, "authorization") == []
    assert not any(keyset.keys[name] in v for _, v in headers)


SPOOFS = [
    ("x-keygate-account-id", "acct_victim"),
    ("x-keygate-account-id", "acct_victim2"),
    ("x-keygate-account-id", ""),
    ("x-keygate-key-id", "key_admin"),
    ("x-keygate-key-id", "key_admin2"),
    ("x-keygate-key-type", "secret"),
    ("x-keygate-key-type", "secret"),
    ("x-keygate-environment", "production"),
]


@pytest.mark.parametrize("name", ["pk_test", "sk_production"])
def test_spoofed_identity_headers_are_replaced(client, protocol, keyset, upstream, name):
    spoofs = list(SPOOFS)
    if protocol == "http1":  # header names are case-insensitive; HTTP/2 sends lower case only
        spoofs += [("X-Keygate-Account-Id", "acct_victim3"), ("X-KEYGATE-KEY-TYPE", "secret")]
    headers = [("authorization", f"token {keyset.keys[name]}")] + spoofs
    r = client.get("/v3/devices/abc", headers=headers)
    seen = forwarded(r, upstream)
    assert_identity(seen, keyset, name)
    for spoofed in ("acct_victim", "acct_victim2", "acct_victim3", "key_admin", "key_admin2"):
        assert not any(v == spoofed for _, v in seen), seen


def test_spoofed_identity_headers_do_not_raise_permissions(client, keyset, upstream):
    headers = [("authorization", f"token {keyset.keys['pk_production']}"),
               ("x-keygate-key-type", "secret"),
               ("x-keygate-key-id", "key_sk_production")]
    assert_refused(client.get("/v3/devices", headers=headers), upstream, 403,
                   "insufficient_permissions")


@pytest.fixture
def custom(pool, protocol):
    gate = pool.get(keep_authorization=True, identity_headers={
        "account_id": "x-account-id", "key_id": "x-api-key-id"})
    with http_client(protocol, gate.url) as c:
        yield c


def test_keep_authorization_forwards_the_header_as_sent(custom, keyset, upstream):
    value = f"Bearer {keyset.keys['sk_test']}"
    r = custom.get("/v3/devices", headers={"authorization": value})
    headers = forwarded(r, upstream)
    assert values(headers, "authorization") == [value]


def test_custom_identity_header_names(custom, keyset, upstream):
    headers = [("authorization", f"token {keyset.keys['pk_production']}"),
               ("x-account-id", "acct_victim"), ("x-api-key-id", "key_admin"),
               ("x-api-key-id", "key_admin2"), ("x-keygate-key-type", "secret")]
    r = custom.get("/v3/devices/abc", headers=headers)
    seen = forwarded(r, upstream)
    assert_identity(seen, keyset, "pk_production", names=(
        "x-account-id", "x-api-key-id", "x-keygate-key-type", "x-keygate-environment"))
    # The renamed headers are ours; the defaults no longer carry the account or key id.
    assert values(seen, "x-keygate-account-id") == []
    assert values(seen, "x-keygate-key-id") == []


@pytest.fixture
def combined(pool, protocol):
    gate = pool.get(identity_header="x-keygate-identity")
    with http_client(protocol, gate.url) as c:
        yield c


def dictionary(value):
    """An RFC 8941 dictionary of sf-strings and tokens, as an upstream would read it."""
    out = {}
    for member in value.split(", "):
        name, _, item = member.partition("=")
        if item.startswith('"'):
            assert item.endswith('"') and len(item) >= 2, value
            item = item[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[name] = item
    return out


@pytest.mark.parametrize("name", list(KINDS))
def test_identity_header_carries_every_field_in_one_header(combined, keyset, upstream, name):
    spoofed = [("x-keygate-identity", 'account-id="acct_victim", key-type=secret'),
               ("x-keygate-identity", "environment=production")]
    headers = [("authorization", f"token {keyset.keys[name]}")] + spoofed
    seen = forwarded(combined.get("/v3/devices/abc", headers=headers), upstream)
    entry = next(e for e in keyset.entries if e["key_id"] == f"key_{name}")
    sent = values(seen, "x-keygate-identity")
    assert len(sent) == 1, seen
    assert dictionary(sent[0]) == {"account-id": entry["account_id"], "key-id": entry["key_id"],
                                   "key-type": entry["type"], "environment": entry["environment"]}
    # Only the combined header: no per-field headers, no credential.
    for header in IDENTITY + ("authorization",):
        assert values(seen, header) == [], (header, seen)


def test_identity_header_without_a_client_copy_is_added_once(combined, keyset, upstream):
    seen = forwarded(combined.get("/v3/devices/abc", headers=token(keyset.keys["sk_test"])),
                     upstream)
    assert len(values(seen, "x-keygate-identity")) == 1, seen


def test_identity_header_spoof_on_a_refusal_never_reaches_the_upstream(combined, upstream):
    r = combined.get("/v3/devices", headers=[("x-keygate-identity", 'account-id="acct_victim"')])
    assert_refused(r, upstream, 401, "missing_credentials")


def test_the_combined_form_sent_by_a_client_never_reaches_the_upstream(client, keyset, upstream):
    """Per-field mode: a client's `x-keygate-identity` is removed too, so an upstream that
    reads the combined form (after a config change, or another service's) is not fooled."""
    headers = [("authorization", f"token {keyset.keys['pk_test']}"),
               ("x-keygate-identity", 'account-id="acct_victim", key-type=secret')]
    seen = forwarded(client.get("/v3/devices/abc", headers=headers), upstream)
    assert values(seen, "x-keygate-identity") == [], seen
    assert_identity(seen, keyset, "pk_test")


def test_per_field_headers_sent_by_a_client_never_reach_the_upstream_in_combined_mode(
        combined, keyset, upstream):
    headers = [("authorization", f"token {keyset.keys['pk_test']}")] + SPOOFS
    seen = forwarded(combined.get("/v3/devices/abc", headers=headers), upstream)
    for header in IDENTITY:
        assert values(seen, header) == [], (header, seen)
    assert len(values(seen, "x-keygate-identity")) == 1


def test_custom_names_mode_strips_both_default_forms(custom, keyset, upstream):
    headers = [("authorization", f"token {keyset.keys['sk_test']}"),
               ("x-keygate-account-id", "acct_victim"), ("x-keygate-key-id", "key_admin"),
               ("x-keygate-identity", 'account-id="acct_victim"')]
    seen = forwarded(custom.get("/v3/devices", headers=headers), upstream)
    for header in ("x-keygate-account-id", "x-keygate-key-id", "x-keygate-identity"):
        assert values(seen, header) == [], (header, seen)


# --- overrides and id patterns --------------------------------------------------------------


@pytest.mark.parametrize("path,headers", [
    ("/v3/devices/abc?_method=DELETE", []),
    ("/v3/devices/abc?_method=delete", []),
    ("/v3/devices/abc?%5Fmethod=PUT", []),
    ("/v3/devices/abc?limit=1&.method=PATCH", []),
    ("/v3/devices/abc", [("x-original-url", "/v3/devices")]),
    ("/v3/devices/abc", [("x-rewrite-url", "/admin/users/1")]),
    ("/v3/devices/abc", [("x-original-url", "/v3/devices/abc?_method=DELETE")]),
])
def test_overrides_that_name_a_forbidden_call_are_refused_for_publishable_keys(
        client, keyset, upstream, path, headers):
    r = client.get(path, headers=[("authorization", f"token {keyset.keys['pk_test']}")] + headers)
    assert_refused(r, upstream, 403, "insufficient_permissions")


@pytest.mark.parametrize("path,headers", [
    ("/v3/devices/abc?_method=GET", []),
    ("/v3/devices/abc?_method=head", []),
    ("/v3/devices/abc", [("x-original-url", "/v3/users/42")]),
])
def test_overrides_that_name_an_allowed_call_pass(client, keyset, upstream, path, headers):
    r = client.get(path, headers=[("authorization", f"token {keyset.keys['pk_test']}")] + headers)
    assert_identity(forwarded(r, upstream, "GET"), keyset, "pk_test")


def test_secret_keys_are_not_limited_by_overrides(client, keyset, upstream):
    r = client.get("/v3/devices?_method=DELETE", headers=[
        ("authorization", f"token {keyset.keys['sk_test']}"), ("x-original-url", "/admin")])
    assert_identity(forwarded(r, upstream, "GET"), keyset, "sk_test")


UUID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
def uuid_ids(pool, protocol):
    gate = pool.get(publishable={"id_pattern": "uuid", "allow": [
        {"methods": ["GET"], "path": "/v3/users/{id:usr_*}"}]})
    with http_client(protocol, gate.url) as c:
        yield c


@pytest.mark.parametrize("path,allowed", [
    (f"/v3/devices/{UUID}", True),
    (f"/api/v1/trips/{UUID.upper()}", True),
    ("/v3/devices/search", False),
    ("/v3/users/me", False),
    ("/v3/users/usr_42", True),
    ("/v3/devices/1", False),
])
def test_id_patterns_constrain_what_a_publishable_key_may_retrieve(
        uuid_ids, keyset, upstream, path, allowed):
    r = uuid_ids.get(path, headers=token(keyset.keys["pk_production"]))
    if allowed:
        assert_identity(forwarded(r, upstream, "GET"), keyset, "pk_production")
    else:
        assert_refused(r, upstream, 403, "insufficient_permissions")


# --- stats --------------------------------------------------------------------------------


def test_counters_count_each_outcome(upstream, keyset):
    envoy = start_envoy(upstream, keyset=keyset)
    try:
        k = keyset.keys
        sequence = [  # (method, path, authorization or None, outcome)
            ("GET", "/v3/devices", f"token {k['sk_test']}", "allowed"),
            ("GET", "/v3/devices/abc", f"Bearer {k['pk_production']}", "allowed"),
            ("POST", "/v3/devices/abc/events", f"Basic {b64(k['pk_test'] + ':')}", "allowed"),
            ("GET", "/v3/devices", None, "denied.missing_credentials"),
            ("OPTIONS", "/v3/devices", None, "denied.missing_credentials"),
            ("GET", "/v3/devices", "token", "denied.malformed_credentials"),
            ("GET", "/v3/devices", f"token {keys.make_key()}", "denied.invalid_api_key"),
            ("GET", "/v3/devices", f"token {typo(k['sk_production'])}", "denied.invalid_api_key"),
            ("GET", "/v3/devices", f"token {k['expired']}", "denied.expired_api_key"),
            ("GET", "/v3/devices", f"token {k['disabled']}", "denied.disabled_api_key"),
            ("GET", "/v3/devices", f"token {k['pk_production']}",
             "denied.insufficient_permissions"),
        ]
        want = dict.fromkeys(
            ["allowed"] + [f"denied.{c}" for c in (
                "missing_credentials", "malformed_credentials", "invalid_api_key",
                "expired_api_key", "disabled_api_key", "insufficient_permissions",
                "wrong_environment", "key_map_unavailable", "not_configured",
                "internal_error", "rate_limited")] + ["rate_limit.overflow"], 0)
        assert envoy.counters() == want
        for protocol in PROTOCOLS:
            with http_client(protocol, envoy.url) as c:
                for method, path, auth, outcome in sequence:
                    headers = {"authorization": auth} if auth is not None else {}
                    r = c.request(method, path, headers=headers)
                    assert (r.status_code == 200) == (outcome == "allowed"), (outcome, r.text)
                    want[outcome] += 1
        assert envoy.counters_settled(want) == want
        assert len(upstream.take()) == want["allowed"] == 6
        # /stats/prometheus: the example config's stats_tags make the reason a label.
        prometheus = envoy.admin("/stats/prometheus").splitlines()
        for name, count in want.items():
            if name.startswith("denied."):
                metric = harness.PROMETHEUS + "keygate_denied"
                series = '{reason="%s"}' % name.split(".", 1)[1]
            else:
                metric, series = harness.PROMETHEUS + "keygate_" + name.replace(".", "_"), "{}"
            lines = [line for line in prometheus if line.startswith(metric + series + " ")]
            assert len(lines) == 1, (metric, series, lines)
            assert lines[0].endswith(f" {count}"), lines
            assert f"# TYPE {metric} counter" in prometheus
        assert not [line for line in prometheus if "keygate_denied_" in line]
    finally:
        envoy.stop()


# --- access log ---------------------------------------------------------------------------


def test_access_log_records_the_decision(client, gate, keyset, upstream):
    marker = uuid.uuid4().hex
    k = keyset.keys
    requests = {
        # path suffix: (authorization, status, details, key_id)
        "allowed": (f"token {k['sk_test']}", 200, "via_upstream", "key_sk_test"),
        "missing": (None, 401, "keygate_missing_credentials", None),
        "malformed": ("token", 401, "keygate_malformed_credentials", None),
        "invalid": (f"token {keys.make_key()}", 401, "keygate_invalid_api_key", None),
        "expired": (f"token {k['expired']}", 401, "keygate_expired_api_key", None),
        "disabled": (f"token {k['disabled']}", 401, "keygate_disabled_api_key", None),
        "forbidden": (f"token {k['pk_production']}", 403, "keygate_insufficient_permissions", None),
    }
    for suffix, (auth, status, _, _) in requests.items():
        headers = {"authorization": auth} if auth else {}
        path = f"/v3/{marker}-{suffix}"
        r = client.get(path, headers=headers)
        assert r.status_code == status, r.text
    upstream.take()
    entries = gate.access_log(lambda e: marker in (e.get("path") or ""), count=len(requests))
    by_suffix = {e["path"].rsplit("-", 1)[1]: e for e in entries}
    assert set(by_suffix) == set(requests), entries
    for suffix, (_, status, details, key_id) in requests.items():
        entry = by_suffix[suffix]
        assert entry["status"] == status, entry
        assert entry["details"] == details, entry
        assert entry["key_id"] == key_id, entry
        if status == 200:
            assert entry["account_id"] == "acct_demo"
            assert entry["key_type"] == "secret"
            assert entry["environment"] == "test"
        else:
            assert entry["account_id"] is None, entry
    log = gate.read_log()
    for name, key in keyset.keys.items():
        assert key not in log, f"the plaintext key {name} is in Envoy's log"


def test_access_log_of_a_refusal_shows_no_client_sent_identity(client, gate, keyset, upstream):
    """The example's access log documents its identity fields as "empty when refused": a
    refused client must not be able to write an identity of its choosing into them."""
    marker = uuid.uuid4().hex
    spoofed = [("x-keygate-account-id", "acct_victim"), ("x-keygate-key-id", "key_victim"),
               ("x-keygate-key-type", "secret"), ("x-keygate-environment", "production")]
    for suffix, auth in [("invalid", f"token {keys.make_key()}"), ("missing", None),
                         ("forbidden", f"token {keyset.keys['pk_production']}")]:
        headers = spoofed + ([("authorization", auth)] if auth else [])
        r = client.get(f"/v3/{marker}-{suffix}", headers=headers)
        assert r.status_code in (401, 403)
    assert upstream.take() == []
    entries = gate.access_log(lambda e: marker in (e.get("path") or ""), count=3)
    assert len(entries) == 3
    for entry in entries:
        assert entry["details"].startswith("keygate_"), entry
        for field in ("account_id", "key_id", "key_type", "environment"):
            assert entry[field] is None, (field, entry)


# --- configs Envoy refuses ----------------------------------------------------------------


def _digest_of_new_key():
    return keys.digest(keys.make_key())


def _entry(**fields):
    base = {"digest": _digest_of_new_key(), "account_id": "acct_demo", "key_id": "key_1",
            "type": "secret", "environment": "test"}
    base.update(fields)
    return base


PLAINTEXT = keys.make_key("secret", "production")

BAD_CONFIGS = {
    # name: (plugin configuration text, text the error line must hold)
    "invalid JSON": ('{"version": 1, "keys": [', "not JSON: the document ends too early at line 1 column 25"),
    "not an object": ('[1]', "invalid keygate config: "),
    "unknown field": ('{"version": 1, "realms": "api"}', "invalid keygate config: realms: "),
    "unknown field in a key": (json.dumps({"version": 1, "keys": [_entry(secret="x")]}),
                               "invalid keygate config: keys[0].secret: "),
    "unknown key type": (json.dumps({"version": 1, "keys": [_entry(type="admin")]}),
                         "invalid keygate config: keys[0].type: "),
    "unsupported version": ('{"version": 2}', "invalid keygate config: version: "),
    "bad digest": (json.dumps({"version": 1, "keys": [_entry(digest="abc123")]}),
                   "invalid keygate config: keys[0].digest: "),
    "plaintext key as digest": (
        json.dumps({"version": 1, "keys": [_entry(), _entry(digest=PLAINTEXT, key_id="k2")]}),
        "invalid keygate config: keys[1].digest: "),
    "duplicate digests": (
        json.dumps({"version": 1, "keys": [_entry(digest="ab" * 32),
                                           _entry(digest="ab" * 32, key_id="key_2")]}),
        "invalid keygate config: keys[1].digest: "),
    "duplicate digests, different case": (
        json.dumps({"version": 1, "keys": [_entry(digest="ab" * 32),
                                           _entry(digest="AB" * 32, key_id="key_2")]}),
        "invalid keygate config: keys[1].digest: "),
    "plaintext key as key id": (json.dumps({"version": 1, "keys": [_entry(key_id=PLAINTEXT)]}),
                                "invalid keygate config: keys[0].key_id: "),
    "rule path without /": (
        json.dumps({"version": 1, "publishable": {
            "allow": [{"methods": ["POST"], "path": "v3/devices/{id}/events"}]}}),
        "invalid keygate config: publishable.allow[0].path: "),
    "bad method": (
        json.dumps({"version": 1, "publishable": {
            "allow": [{"methods": ["GET", "PO ST"], "path": "/v3/x"}]}}),
        "invalid keygate config: publishable.allow[0].methods[1]: "),
    "unknown scheme": (json.dumps({"version": 1, "schemes": ["token", "digest"]}),
                       "invalid keygate config: schemes[1]: "),
    "realm with a quote": (json.dumps({"version": 1, "realm": 'a"b'}),
                           "invalid keygate config: realm: "),
    "identity header authorization": (
        json.dumps({"version": 1, "identity_headers": {"key_id": "authorization"}}),
        "invalid keygate config: identity_headers.key_id: "),
    "unknown environment": (json.dumps({"version": 1, "environment": "staging"}),
                            "invalid keygate config: environment: must be one of `test`, `production`"),
    "field given twice": ('{"version": 1, "realm": "a", "realm": "b"}',
                          "invalid keygate config: realm: given twice"),
    "wrong type": ('{"version": "1"}',
                   "invalid keygate config: version: expected a number, got a string"),
    "rate limit of zero": (
        json.dumps({"version": 1, "keys": [_entry(rate_limit={"requests": 0, "per": "second"})]}),
        "invalid keygate config: keys[0].rate_limit: requests must be between 1 and 1000000"),
    "rate limit per hour": (
        json.dumps({"version": 1, "keys": [_entry(rate_limit={"requests": 5, "per": "hour"})]}),
        "invalid keygate config: keys[0].rate_limit.per: must be one of `second`, `minute`"),
    "rate limit burst of zero": (
        json.dumps({"version": 1, "keys": [
            _entry(rate_limit={"requests": 5, "per": "minute", "burst": 0})]}),
        "invalid keygate config: keys[0].rate_limit: burst must be between 1 and 1000000"),
    "rate limit workers": (json.dumps({"version": 1, "rate_limit_workers": 0}),
                           "invalid keygate config: rate_limit_workers: must be between 1 and 1024"),
    "rate limit headers not a boolean": (
        json.dumps({"version": 1, "rate_limit_headers": "yes"}),
        "invalid keygate config: rate_limit_headers: expected a boolean, got a string"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configs_are_refused(upstream, case):
    value, want = BAD_CONFIGS[case]
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1]}
    config = harness.localize(harness.load_example("envoy.yaml"), ports)
    for f in harness.keygate_filters(config):
        harness.set_plugin_text(f, value)
    envoy = harness.Envoy(config)
    try:
        rc = envoy.start(expect_failure=True)
        assert rc != 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports[10000]), timeout=1).close()
    finally:
        envoy.stop()
    log = envoy.read_log()
    errors = [line for line in log.splitlines() if "invalid keygate config" in line]
    assert errors, log
    assert any(want in line for line in errors), (want, errors)
    assert PLAINTEXT not in log
