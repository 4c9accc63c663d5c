"""Fixtures shared by the integration suites: a recording upstream, Envoy with keygate
from an example config, test keys, and HTTP/1.1 + HTTP/2 clients."""

import sys
import tempfile
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import keys  # noqa: E402
import upstream as upstream_mod  # noqa: E402


def pytest_sessionstart(session):
    module = harness.NATIVE if harness.NATIVE_MODE else harness.WASM
    if not module.exists():
        raise pytest.UsageError(f"{module} is missing: run `make build` first")


@pytest.fixture(scope="session", autouse=True)
def process_dirs_under_basetemp(tmp_path_factory):
    """Envoy's and keygatectl's work directories (config, log, stats, database) go under
    pytest's base temp, which pytest prunes to the last three runs, instead of piling up in
    /tmp at a thousand a run; a failed run's logs stay there to read."""
    tempfile.tempdir = str(tmp_path_factory.mktemp("processes"))
    yield
    tempfile.tempdir = None


@pytest.fixture
def stopped_after(request):
    """`stopped_after(process)` answers the process (an Envoy or Keygatectl, started) and
    stops it after the test, even when the test or a later start fails."""
    def register(process):
        request.addfinalizer(process.stop)
        return process
    return register


@pytest.fixture
def upstream():
    server = upstream_mod.start()
    yield server
    server.shutdown()
    server.server_close()


class KeySet:
    """One account's four keys plus extra cases, with their key-map entries."""

    def __init__(self):
        self.account = "acct_demo"
        self.keys = {}
        self.entries = []
        for key_type in ("secret", "publishable"):
            for env in ("test", "production"):
                name = f"{key_type[0]}k_{env}"
                key = keys.make_key(key_type, env)
                self.keys[name] = key
                self.entries.append(keys.entry(key, self.account, f"key_{name}", key_type, env))

    def add(self, name, key, **fields):
        self.keys[name] = key
        base = {"account_id": self.account, "key_id": f"key_{name}"}
        base.update(fields)
        self.entries.append(keys.entry(key, **base))
        return key


@pytest.fixture
def keyset():
    return KeySet()


def start_envoy(upstream, plugin_overrides=None, example="envoy.yaml", keyset=None, concurrency=2):
    config = harness.load_example(example)
    ports = {9901: harness.free_port(), 10000: harness.free_port(), 8081: upstream.server_address[1]}
    config = harness.localize(config, ports)
    plugin = harness.plugin_config(config)
    if keyset is not None:
        plugin["keys"] = keyset.entries
    plugin.update(plugin_overrides or {})
    harness.set_plugin_config(config, plugin)
    envoy = harness.Envoy(config, concurrency=concurrency)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


@pytest.fixture
def gate(upstream, keyset):
    """Envoy with the static example config and `keyset`'s keys."""
    envoy = start_envoy(upstream, keyset=keyset)
    yield envoy
    envoy.stop()


@pytest.fixture(params=["http1", "http2"])
def client(request, gate):
    if request.param == "http1":
        c = httpx.Client(base_url=gate.url, timeout=5)
    else:
        c = httpx.Client(base_url=gate.url, timeout=5, http1=False, http2=True)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------
# Shared, longer-lived Envoys for the feature suites: one per module and configuration, so a
# suite pays Envoy's start-up once rather than once per test.

PROTOCOLS = ["http1", "http2"]


def http_client(protocol, url):
    """An httpx client speaking HTTP/1.1 or HTTP/2 with prior knowledge."""
    if protocol == "http1":
        return httpx.Client(base_url=url, timeout=5)
    return httpx.Client(base_url=url, timeout=5, http1=False, http2=True)


class GatePool:
    """Envoys with keygate started on demand, one per distinct set of plugin overrides, all
    forwarding to one upstream with one key set; `stop` ends them all."""

    def __init__(self, upstream, keyset):
        self.upstream = upstream
        self.keyset = keyset
        self.started = {}

    def get(self, **overrides):
        import json

        name = json.dumps(overrides, sort_keys=True)
        if name not in self.started:
            self.started[name] = start_envoy(self.upstream, overrides, keyset=self.keyset)
        return self.started[name]

    def stop(self):
        for envoy in self.started.values():
            envoy.stop()
        self.started.clear()


@pytest.fixture(scope="module")
def module_upstream():
    server = upstream_mod.start()
    yield server
    server.shutdown()
    server.server_close()
