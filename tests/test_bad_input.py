"""Hostile and malformed requests through a real Envoy, over HTTP/1.1 (raw sockets) and HTTP/2
(the `h2` library, its own checks off), byte for byte as written here: what a client gets, and
that the upstream saw nothing of a refused request and never a client-supplied identity.

Expectations per case:
- (status, code): keygate refuses with that status and JSON `error.code`;
- ALLOW(name): the request reaches the upstream with the identity of key `name`;
- ENVOY: Envoy's codec refuses it before any filter runs (400/431, or the HTTP/2 stream or
  connection is closed) — keygate never sees it, and neither does the upstream."""

import base64
from dataclasses import dataclass

import pytest

import keys
import rawhttp
from conftest import PROTOCOLS, GatePool, KeySet

ALL_CHALLENGES = 'Token realm="api", Bearer realm="api", Basic realm="api"'
IDENTITY = ("x-keygate-account-id", "x-keygate-key-id", "x-keygate-key-type",
            "x-keygate-environment")
ENVOY = "envoy"
MISSING = (401, "missing_credentials")
MALFORMED = (401, "malformed_credentials")
INVALID = (401, "invalid_api_key")
FORBIDDEN = (403, "insufficient_permissions")


@dataclass(frozen=True)
class Allow:
    name: str
    path: str | None = None  # the path the upstream must receive, when it matters


def ALLOW(name="sk_test", path=None):
    return Allow(name, path)


@dataclass
class Case:
    id: str
    headers: object  # keyset → [(name, value)], values str or bytes
    expect: object  # (status, code), Allow or ENVOY; or a dict protocol → one of those
    method: str = "GET"
    target: str = "/v3/devices"
    protocols: tuple = tuple(PROTOCOLS)
    raw: object = None  # HTTP/1.1 only: keyset → the whole request as bytes

    def expectation(self, protocol):
        return self.expect[protocol] if isinstance(self.expect, dict) else self.expect


def auth(value):
    """One authorization header; `value(keys)` builds it from the key set's keys."""
    return lambda k: [("authorization", value(k))]


def filler(n):
    """`n` harmless extra headers (Envoy's default limit is 100 headers in all)."""
    return [(f"x-filler-{i}", "v") for i in range(n)]


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


SPOOFS = [
    ("x-keygate-account-id", "acct_victim"),
    ("x-keygate-account-id", "acct_victim"),
    ("x-keygate-key-id", "key_victim"),
    ("x-keygate-key-id", "key_victim_2"),
    ("x-keygate-key-type", "secret"),
    ("x-keygate-key-type", "secret"),
    ("x-keygate-environment", "production"),
    ("x-keygate-environment", "production"),
]
SPOOFED_VALUES = {"acct_victim", "key_victim", "key_victim_2"}

def cases():
    sk = lambda k: k["sk_test"]  # noqa: E731
    pk = lambda k: k["pk_test"]  # noqa: E731
    long_key = "sk_test_" + "a" * 121  # 129 characters: one over the default limit
    return [
        # --- empty, blank and incomplete credentials ------------------------------------
        Case("empty value", auth(lambda k: ""), MISSING),
        Case("only spaces", auth(lambda k: "    "), MISSING),
        Case("only a tab", auth(lambda k: "\t"), MISSING),
        Case("token alone", auth(lambda k: "token"), MALFORMED),
        Case("token and spaces", auth(lambda k: "token    "), MALFORMED),
        Case("Bearer alone", auth(lambda k: "Bearer"), MALFORMED),
        Case("Basic alone", auth(lambda k: "Basic"), MALFORMED),
        Case("unknown scheme", auth(lambda k: f"Digest {sk(k)}"), MALFORMED),
        Case("ApiKey scheme", auth(lambda k: f"ApiKey {sk(k)}"), MALFORMED),
        Case("scheme with a colon", auth(lambda k: f"Bearer: {sk(k)}"), MALFORMED),
        Case("key without scheme", auth(lambda k: sk(k)), MALFORMED),
        Case("no space after scheme", auth(lambda k: f"token{sk(k)}"), MALFORMED),
        Case("tab after scheme", auth(lambda k: f"token\t{sk(k)}"), MALFORMED),
        Case("tab inside key", auth(lambda k: f"token {sk(k)[:12]}\t{sk(k)[12:]}"), MALFORMED),
        Case("space inside key", auth(lambda k: f"token {sk(k)[:12]} {sk(k)[12:]}"), MALFORMED),
        Case("two keys in one header", auth(lambda k: f"token {sk(k)} {pk(k)}"), MALFORMED),
        Case("prefix only", auth(lambda k: "token sk_test_"), MALFORMED),
        Case("production prefix only", auth(lambda k: "Bearer pk_"), MALFORMED),
        Case("key of 129 characters", auth(lambda k: f"token {long_key}"), MALFORMED),
        Case("key of 200 characters", auth(lambda k: "token sk_test_" + "b" * 192), MALFORMED),
        Case("16 KB token", auth(lambda k: "token sk_test_" + "a" * 16384), MALFORMED),
        Case("16 KB Basic", auth(lambda k: "Basic " + "QUFB" * 4096), MALFORMED),
        Case("59 KB authorization", auth(lambda k: "token " + "a" * 59_000), MALFORMED),
        Case("leading and trailing spaces", auth(lambda k: f"   token {sk(k)}   "), ALLOW()),
        Case("trailing tab", auth(lambda k: f"token {sk(k)}\t"), ALLOW()),
        # --- keys of the right shape that are not ours ----------------------------------
        Case("unknown prefix", auth(lambda k: "token rk_test_" + sk(k)[8:]), INVALID),
        Case("upper-cased key", auth(lambda k: f"token {sk(k).upper()}"), INVALID),
        Case("quoted key", auth(lambda k: f'token "{sk(k)}"'), INVALID),
        Case("key with a character appended", auth(lambda k: f"token {sk(k)}x"), INVALID),
        Case("key with its last character cut", auth(lambda k: f"token {sk(k)[:-1]}"), INVALID),
        Case("test key under the production prefix",
             auth(lambda k: f"token sk_{sk(k)[8:]}"), INVALID),
        # --- Basic ----------------------------------------------------------------------
        Case("bad base64", auth(lambda k: "Basic !!!!"), MALFORMED),
        Case("URL-safe base64", auth(lambda k: "Basic Pz8_"), MALFORMED),
        Case("non-canonical base64", auth(lambda k: "Basic YR=="), MALFORMED),
        Case("base64 split by a space",
             auth(lambda k: f"Basic {b64(sk(k) + ':')[:8]} {b64(sk(k) + ':')[8:]}"), MALFORMED),
        Case("base64 of non-UTF-8", auth(lambda k: f"Basic {b64(bytes([0xe9, 0x74, 0xe9, 0x3a]))}"),
             MALFORMED),
        Case("base64 without a colon", auth(lambda k: f"Basic {b64(sk(k))}"), MALFORMED),
        Case("base64 of a colon alone", auth(lambda k: f"Basic {b64(':')}"), MALFORMED),
        Case("NUL after the key via base64",
             auth(lambda k: f"Basic {b64('acct_demo:' + sk(k) + chr(0))}"), MALFORMED),
        Case("NUL in the account via base64",
             auth(lambda k: f"Basic {b64('acct' + chr(0) + '_demo:' + sk(k))}"), MALFORMED),
        Case("newline via base64", auth(lambda k: f"Basic {b64(sk(k) + chr(10) + ':')}"),
             MALFORMED),
        Case("space in the key via base64", auth(lambda k: f"Basic {b64('sk_test_a b:')}"),
             MALFORMED),
        Case("Basic with the wrong account", auth(lambda k: f"Basic {b64('acct_evil:' + sk(k))}"),
             INVALID),
        Case("Basic with the key as account too",
             auth(lambda k: f"Basic {b64(sk(k) + ':' + sk(k))}"), INVALID),
        # --- several credentials --------------------------------------------------------
        Case("two valid authorization headers",
             lambda k: [("authorization", f"token {sk(k)}")] * 2, MALFORMED),
        Case("two different valid keys",
             lambda k: [("authorization", f"token {sk(k)}"), ("authorization", f"token {pk(k)}")],
             MALFORMED),
        Case("valid then invalid",
             lambda k: [("authorization", f"token {sk(k)}"), ("authorization", "token sk_test_x")],
             MALFORMED),
        Case("invalid then valid",
             lambda k: [("authorization", "token sk_test_x"), ("authorization", f"token {sk(k)}")],
             MALFORMED),
        Case("token and Basic for the same key",
             lambda k: [("authorization", f"token {sk(k)}"),
                        ("authorization", f"Basic {b64(sk(k) + ':')}")], MALFORMED),
        Case("120 authorization headers", lambda k: [("authorization", f"token {sk(k)}")] * 120,
             MALFORMED),
        Case("comma-joined", auth(lambda k: f"token {sk(k)}, token {sk(k)}"), MALFORMED),
        Case("comma-joined without space", auth(lambda k: f"token {sk(k)},token {pk(k)}"),
             MALFORMED),
        Case("trailing comma", auth(lambda k: f"token {sk(k)},"), MALFORMED),
        # --- bytes that are not UTF-8, and control characters ---------------------------
        Case("non-UTF-8 key", auth(lambda k: b"token \xff\xfe"), MALFORMED),
        Case("valid key then 0xff", auth(lambda k: f"token {sk(k)}".encode() + b"\xff"),
             MALFORMED),
        Case("latin-1 byte in key", auth(lambda k: b"token sk_test_caf\xe9"), MALFORMED),
        Case("UTF-8 letter in key", auth(lambda k: "token sk_test_café".encode()), MALFORMED),
        Case("NUL in value", auth(lambda k: f"token {sk(k)}\x00"), ENVOY),
        Case("SOH in value", auth(lambda k: f"token {sk(k)}\x01"), ENVOY),
        Case("vertical tab in value", auth(lambda k: f"token {sk(k)}\x0b"), ENVOY),
        Case("ESC in value", auth(lambda k: f"token {sk(k)}\x1b[0m"), ENVOY),
        Case("DEL in value", auth(lambda k: f"token {sk(k)}\x7f"), ENVOY),
        # HTTP/1.1: Envoy drops a bare CR, so keygate sees the key with "x" appended.
        Case("bare CR in value", auth(lambda k: f"token {sk(k)}\rx"),
             {"http1": INVALID, "http2": ENVOY}),
        Case("space before the colon", None, ENVOY, protocols=("http1",),
             raw=lambda k: (f"GET /v3/devices HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                            f"authorization : token {sk(k)}\r\n"
                            f"connection: close\r\n\r\n").encode()),
        Case("upper-case header name (HTTP/1.1)",
             lambda k: [("AUTHORIZATION", f"TOKEN {sk(k)}")], ALLOW(), protocols=("http1",)),
        Case("upper-case header name (HTTP/2)",
             lambda k: [("Authorization", f"token {sk(k)}")], ENVOY, protocols=("http2",)),
        # --- paths with a publishable key -----------------------------------------------
        *[Case(f"publishable key, path {path}", auth(lambda k: f"token {pk(k)}"), FORBIDDEN,
               method=method, target=path) for method, path in [
            ("GET", "/v3/devices/..%2F..%2Fadmin"),
            ("GET", "/v3/devices/%2e%2e/%2e%2e/admin"),
            ("GET", "/v3/devices/%2E%2E"),
            ("GET", "/v3/devices/.%2e/"),
            ("GET", "/v3/devices/abc/%2e%2e/"),
            ("GET", "/v3/devices/a%2Fb"),
            ("GET", "/v3/devices%2Fabc"),
            ("GET", "/v3/devices/a%5Cb"),
            ("GET", "//v3//devices"),
            ("GET", "/v3//devices//"),
            ("GET", "/v3/devices?id=1"),
            ("GET", "/v3/devices/?id=1"),
            ("GET", "/v3/devices/%zz"),
            ("GET", "/v3/devices/%C3%A9"),
            ("GET", "/v3/devices/a\\b"),
            ("GET", "/v3/devices/abc;jsessionid=1"),
            ("GET", "/v3/devices/abc/..;/"),
            ("GET", "/v3/devices/abc/events"),
            ("POST", "/v3/devices/abc/events/.."),
            ("HEAD", "/v3/devices"),
        ]],
        # Envoy resolves dot segments and merges slashes first (normalize_path, merge_slashes in
        # the example): keygate judges, and the upstream receives, the same resolved path.
        *[Case(f"publishable key, path {path}", auth(lambda k: f"token {pk(k)}"),
               ALLOW("pk_test", path=upstream_path), method=method, target=path)
          for method, path, upstream_path in [
            ("GET", "/../v3/devices/abc", "/v3/devices/abc"),
            ("GET", "//v3//devices//abc", "/v3/devices/abc"),
            ("GET", "/v3/devices/abc/trips/..", "/v3/devices/abc/"),
            ("GET", "/v3/devices/abc/trips/%2e%2e", "/v3/devices/abc/"),
            ("GET", "/v3/devices/%2e%2e/users/42", "/v3/users/42"),
            ("GET", "/v3/d%65vices/abc", "/v3/devices/abc"),
            ("POST", "/v3/devices/abc/./events", "/v3/devices/abc/events"),
        ]],
        Case("publishable key, NUL in the path", auth(lambda k: f"token {pk(k)}"), ENVOY,
             target="/v3/devices/abc%00"),
        Case("publishable key, path with a fragment", auth(lambda k: f"token {pk(k)}"), ENVOY,
             target="/v3/devices/abc#x"),
        Case("publishable key, lower-case method", auth(lambda k: f"token {pk(k)}"),
             {"http1": ENVOY, "http2": FORBIDDEN}, method="get", target="/v3/devices/abc"),
        Case("publishable key, allowed path", auth(lambda k: f"token {pk(k)}"), ALLOW("pk_test"),
             target="/v3/devices/abc"),
        # --- spoofed identity headers ---------------------------------------------------
        Case("spoofed identity, valid secret key",
             lambda k: [("authorization", f"token {sk(k)}")] + SPOOFS, ALLOW()),
        Case("spoofed identity, valid publishable key",
             lambda k: SPOOFS + [("authorization", f"token {pk(k)}")], ALLOW("pk_test"),
             target="/v3/devices/abc"),
        Case("spoofed secret type, publishable key listing",
             lambda k: [("authorization", f"token {pk(k)}"), ("x-keygate-key-type", "secret")],
             FORBIDDEN),
        Case("spoofed identity, invalid key",
             lambda k: SPOOFS + [("authorization", f"token {keys.make_key()}")], INVALID),
        Case("spoofed identity, no key", lambda k: SPOOFS, MISSING),
        Case("spoofed identity, malformed key",
             lambda k: SPOOFS + [("authorization", "token")], MALFORMED),
        Case("spoofed identity, expired key",
             lambda k: SPOOFS + [("authorization", f"token {k['expired']}")],
             (401, "expired_api_key")),
        Case("spoofed identity in mixed case",
             lambda k: [("authorization", f"token {sk(k)}"),
                        ("X-Keygate-Account-Id", "acct_victim"),
                        ("X-KEYGATE-KEY-ID", "key_victim")], ALLOW(), protocols=("http1",)),
        Case("spoofed identity, bare LF splits the header",
             auth(lambda k: f"token {sk(k)}\nx-keygate-account-id: acct_victim"),
             {"http1": ALLOW(), "http2": ENVOY}),
        # --- CORS preflight -------------------------------------------------------------
        Case("CORS preflight without credentials",
             lambda k: [("origin", "https://app.example"),
                        ("access-control-request-method", "DELETE"),
                        ("access-control-request-headers", "authorization")], MISSING,
             method="OPTIONS"),
        Case("CORS preflight with a publishable key",
             lambda k: [("origin", "https://app.example"),
                        ("access-control-request-method", "GET"),
                        ("authorization", f"token {pk(k)}")], FORBIDDEN,
             method="OPTIONS", target="/v3/devices/abc"),
        # --- many and large headers -----------------------------------------------------
        Case("90 extra headers",
             lambda k: [("authorization", f"token {sk(k)}")] + filler(90),
             ALLOW()),
        Case("100 extra headers",
             lambda k: [("authorization", f"token {sk(k)}")] + filler(100),
             ENVOY),
        Case("100 extra headers, no key", lambda k: filler(100), ENVOY),
        Case("59 KB other header",
             lambda k: [("authorization", f"token {sk(k)}"), ("x-big", "a" * 59_000)], ALLOW()),
        Case("70 KB other header",
             lambda k: [("authorization", f"token {sk(k)}"), ("x-big", "a" * 70_000)], ENVOY),
        Case("70 KB authorization", auth(lambda k: "token " + "a" * 70_000), ENVOY),
    ]


CASES = cases()
PARAMS = [pytest.param(case, protocol, id=f"{protocol}-{case.id}")
          for case in CASES for protocol in PROTOCOLS if protocol in case.protocols]


@pytest.fixture(scope="module")
def keyset():
    ks = KeySet()
    ks.add("expired", keys.make_key("secret", "test"), key_type="secret", environment="test",
           expires_at=1_000_000_000)
    return ks


@pytest.fixture(scope="module")
def upstream(module_upstream):
    return module_upstream


@pytest.fixture(scope="module")
def gate(upstream, keyset):
    pool = GatePool(upstream, keyset)
    envoy = pool.get()
    yield envoy
    try:
        problems = health_problems(envoy, upstream, keyset)
    finally:
        pool.stop()
    assert not problems, problems


def health_problems(envoy, upstream, keyset):
    """What is wrong with Envoy after the bad input: a VM trap or reload, a crash, a valid
    request no longer served, a plaintext key in the log."""
    problems = []
    if envoy.proc.poll() is not None:
        return [f"envoy exited with {envoy.proc.returncode}"]
    reloads = {k: v for k, v in envoy.counters("wasm.keygate.").items() if v}
    if reloads:
        problems.append(f"wasm VM reloads: {reloads}")
    upstream.take()
    for protocol in PROTOCOLS:
        r = rawhttp.send(protocol, envoy.url, target="/v3/devices",
                         headers=[("authorization", f"token {keyset.keys['sk_test']}")])
        if r.status != 200 or len(upstream.take()) != 1:
            problems.append(f"{protocol}: a valid request got {r.status} {r.body[:200]!r}")
    log = envoy.read_log()
    for marker in ("panicked", "wasm trap", "Function: proxy_on", "Plugin configured to fail"):
        if marker in log:
            problems.append(f"log says {marker!r}")
    for name, key in keyset.keys.items():
        if key in log:
            problems.append(f"the plaintext key {name} is in the log")
    return problems


@pytest.fixture(autouse=True)
def drained(upstream):
    upstream.take()
    yield


def send(gate, case, protocol, k):
    if case.raw is not None:
        return rawhttp.http1_raw(gate.url, case.raw(k))
    # Envoy closes an HTTP/2 connection with a malformed header block only after its 1 s
    # delayed-close timeout: don't wait for that when a refusal by Envoy is expected.
    timeout = 0.3 if case.expectation(protocol) == ENVOY and protocol == "http2" else 5
    return rawhttp.send(protocol, gate.url, method=case.method, target=case.target,
                        headers=case.headers(k), timeout=timeout)


@pytest.mark.parametrize("case,protocol", PARAMS)
def test_bad_input(gate, upstream, keyset, case, protocol):
    k = keyset.keys
    expect = case.expectation(protocol)
    r = send(gate, case, protocol, k)
    seen = upstream.take()

    if isinstance(expect, Allow):
        assert r.status == 200, (r.status, r.body[:300])
        assert len(seen) == 1, seen
        if expect.path is not None:
            assert seen[0]["path"] == expect.path, seen[0]["path"]
        headers = seen[0]["headers"]
        entry = next(e for e in keyset.entries if e["key_id"] == f"key_{expect.name}")
        want = [entry["account_id"], entry["key_id"], entry["type"], entry["environment"]]
        for name, value in zip(IDENTITY, want):
            assert [v for n, v in headers if n == name] == [value], (name, headers)
        assert not [v for _, v in headers if v in SPOOFED_VALUES], headers
        assert not [n for n, _ in headers if n == "authorization"], headers
        return

    assert seen == [], "a refused request reached the upstream"
    if expect == ENVOY:
        # Refused by Envoy's codec: an HTTP error or a closed stream, never keygate's JSON.
        assert r.status in (400, 431, None), (r.status, r.body[:300])
        assert r.code is None, r.body
        return

    status, code = expect
    assert r.status == status, (r.status, r.body[:300])
    assert r.header("content-type") == "application/json"
    if case.method != "HEAD":
        assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}
    if status == 401:
        assert r.headers.get("www-authenticate") == [ALL_CHALLENGES]
    else:
        assert "www-authenticate" not in r.headers
    for key in k.values():
        assert key.encode() not in r.body


def test_envoy_is_healthy_after_bad_input(gate, upstream, keyset):
    """Every case that reaches keygate once more, in one go, then a valid request on each
    protocol: no VM trap, no reload, no crash."""
    for case in CASES:
        for protocol in case.protocols:
            if case.expectation(protocol) != ENVOY:
                send(gate, case, protocol, keyset.keys)
    assert health_problems(gate, upstream, keyset) == []


def test_case_count():
    """The suite covers at least 40 distinct bad inputs."""
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
