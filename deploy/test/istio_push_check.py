"""Checks deploy/istio/wasmplugin.yaml the way Istio would use it, without a cluster: the
plugin.wasm taken out of the OCI image, in an Envoy filter configured as istiod builds one
from a WasmPlugin (root id = pluginName, no vm_id, configuration = the pluginConfig as JSON),
with the key map exported by keygatectl merged into deploy/istio/plugin-config.base.json.

Also checks the documented limits: the pluginConfig settings equal the base file's, and
keygate.wasm configured for the fetcher service (which a WasmPlugin cannot add) refuses
with 503. Then the sync-mode WasmPlugin (deploy/istio/wasmplugin-sync.yaml) with the
standalone image's plugin.wasm, polling a running keygatectl through a cluster named the
Istio way, the sync token from the proxy's environment (vmConfig.env, valueFrom HOST).

Usage: python istio_push_check.py PLUGIN_WASM STANDALONE_PLUGIN_WASM WORKDIR
(run by scripts/oci-test.sh)
Needs: PyYAML, the envoy binary (ENVOY or the venv's), target/release/keygatectl.
Everything listens on 127.0.0.1, on free ports."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CTL = ROOT / "target" / "release" / "keygatectl"
# The loader that refuses a key given twice (tests/strict_yaml.py), for the shipped file.
sys.path.insert(0, str(ROOT / "tests"))
import strict_yaml  # noqa: E402
import istio  # noqa: E402  (tests/istio.py: Envoy as istiod configures a WasmPlugin)


def envoy_binary():
    venv = sorted(ROOT.glob(".venv/lib/python3*/site-packages/envoy/_bin/envoy"))
    return os.environ.get("ENVOY") or (str(venv[0]) if venv else shutil.which("envoy"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg):
    print(f"oci-test: {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise SystemExit(f"oci-test FAILED: {msg}")


def get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"token {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def istio_filter(plugin, wasm_path, namespace="my-app"):
    """The HTTP filter istiod makes of a WasmPlugin (pilot/pkg/model/extensions.go)."""
    spec = plugin["spec"]
    return {
        "name": f"{namespace}.{plugin['metadata']['name']}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": f"{namespace}.{plugin['metadata']['name']}",
                "root_id": spec["pluginName"],
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm_path)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(spec["pluginConfig"]),
                },
            },
        },
    }


def listener(name, port, wasm_filter):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": name, "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "upstream ok"}}}],
                }]},
                "http_filters": [wasm_filter, {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def main():
    wasm, standalone, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    plugin = strict_yaml.load(ROOT / "deploy/istio/wasmplugin.yaml")
    spec = plugin["spec"]
    check(plugin["kind"] == "WasmPlugin" and plugin["apiVersion"] == "extensions.istio.io/v1alpha1", "not a WasmPlugin")
    for field, want in [("phase", "AUTHN"), ("failStrategy", "FAIL_CLOSE"), ("type", "HTTP"), ("pluginName", "keygate")]:
        check(spec.get(field) == want, f"wasmplugin.yaml: {field} is {spec.get(field)!r}, expected {want!r}")
    base = json.loads((ROOT / "deploy/istio/plugin-config.base.json").read_text())
    settings = {k: v for k, v in spec["pluginConfig"].items() if k != "keys"}
    check(settings == base, "wasmplugin.yaml's pluginConfig settings differ from plugin-config.base.json")
    say("wasmplugin.yaml: AUTHN, FAIL_CLOSE, pluginName keygate; settings = plugin-config.base.json")

    # A key, and the push-mode pluginConfig: `keygatectl export --base plugin-config.base.json`.
    db = work / "keygate.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    created = json.loads(subprocess.run(
        [str(CTL), "--database", str(db), "--json", "account", "create", "--name", "istio"],
        check=True, capture_output=True, text=True, env=env).stdout)
    key = next(k["key"] for k in created["keys"] if k["type"] == "secret" and k["environment"] == "test")
    exported = json.loads(subprocess.run(
        [str(CTL), "--database", str(db), "export", "--format", "plugin-config",
         "--base", str(ROOT / "deploy/istio/plugin-config.base.json")],
        check=True, capture_output=True, text=True, env=env).stdout)
    check(len(exported.get("keys", [])) == 4, "export has no keys")
    pushed = dict(plugin, spec=dict(spec, pluginConfig=exported))
    # What a WasmPlugin can give in sync mode: the filter config alone, no fetcher.
    synced = dict(plugin, spec=dict(spec, pluginConfig={"version": 1, "sync": {"namespace": "keygate"}}))

    push_port, sync_port, admin_port = free_port(), free_port(), free_port()
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [
            listener("push", push_port, istio_filter(pushed, wasm)),
            listener("sync", sync_port, istio_filter(synced, wasm)),
        ]},
    }
    (work / "envoy.yaml").write_text(yaml.safe_dump(config))
    log = open(work / "envoy.log", "wb")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(work / "envoy.yaml"), "--concurrency", "1",
         "--disable-hot-restart", "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        deadline = time.monotonic() + 30
        while True:
            check(proc.poll() is None, "envoy exited:\n" + (work / "envoy.log").read_text())
            try:
                if get(f"http://127.0.0.1:{admin_port}/ready")[0] == 200:
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline, "envoy not ready:\n" + (work / "envoy.log").read_text())
            time.sleep(0.1)
        url = f"http://127.0.0.1:{push_port}/v3/istio-check"
        status, body = get(url)
        check(status == 401 and "missing_credentials" in body, f"push, no key: {status} {body}")
        status, body = get(url, key)
        check(status == 200, f"push, exported key: {status} {body}")
        status, body = get(url, "sk_test_" + "0" * 40)
        check(status == 401, f"push, unknown key: {status} {body}")
        say("the image's plugin.wasm as istiod would configure it (push mode, keys from "
            "keygatectl export): no key 401, exported key 200, unknown key 401")
        status, body = get(f"http://127.0.0.1:{sync_port}/v3/istio-check", key)
        check(status == 503 and "key_map_unavailable" in body, f"sync mode without fetcher: {status} {body}")
        say("keygate.wasm in the fetcher service's sync mode, without the fetcher: 503 "
            "key_map_unavailable (fails closed), as wasmplugin.yaml documents")
    finally:
        stop(proc)
        log.close()
    sync_check(standalone, work, db, key, env)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait(predicate, what, log_path, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        check(time.monotonic() < deadline, f"{what}:\n" + Path(log_path).read_text()[-3000:])
        time.sleep(0.1)


def sync_check(standalone, work, db, key, env):
    """wasmplugin-sync.yaml with the standalone image's module: keygatectl serves the map,
    the filter's leader polls it, every request is judged by the map it publishes."""
    token = "kgsync_oci_" + os.urandom(16).hex()
    (work / "sync-token").write_text(token + "\n")
    os.chmod(work / "sync-token", 0o600)
    ctl_port, admin_port, listen_port, app_port = free_port(), free_port(), free_port(), free_port()
    ctl_log = open(work / "keygatectl.log", "wb")
    ctl = subprocess.Popen(
        [str(CTL), "--database", str(db), "serve", "--listen", f"127.0.0.1:{ctl_port}",
         "--sync-token-file", str(work / "sync-token")],
        stdout=ctl_log, stderr=subprocess.STDOUT, env=dict(env, KEYGATE_ADMIN_TOKEN="kgadm_" + os.urandom(16).hex()))
    envoy = None
    try:
        wait(lambda: get(f"http://127.0.0.1:{ctl_port}/healthz")[0] == 200, "keygatectl not up",
             work / "keygatectl.log")
        plugin = istio.load(istio.SYNC_PLUGIN)
        sync = plugin["spec"]["pluginConfig"]["sync"]
        check(plugin["spec"]["failStrategy"] == "FAIL_RELOAD", "wasmplugin-sync.yaml: failStrategy")
        sync["authority"] = "localhost"  # what a loopback keygatectl answers
        config = istio.envoy_config(plugin, standalone, admin_port, listen_port, app_port,
                                    {sync["cluster"]: ctl_port})
        # No app behind it: the route's cluster answers 503 for what keygate lets through.
        (work / "envoy-sync.yaml").write_text(yaml.safe_dump(config))
        envoy_log = open(work / "envoy-sync.log", "wb")
        envoy = subprocess.Popen(
            [envoy_binary(), "-c", str(work / "envoy-sync.yaml"), "--concurrency", "2",
             "--disable-hot-restart", "--log-level", "info"],
            stdout=envoy_log, stderr=subprocess.STDOUT, cwd=work,
            env=dict(os.environ, **{sync["bearer_token_env"]: token}))
        url = f"http://127.0.0.1:{listen_port}/v3/istio-check"
        # Let through (to no app: 503 from the router, not keygate's JSON) once the map is in.
        wait(lambda: get(url, key)[0] == 503 and "key_map_unavailable" not in get(url, key)[1],
             "the synced key was not let through", work / "envoy-sync.log")
        status, body = get(url, "sk_test_" + "0" * 40)
        check(status == 401, f"sync, unknown key: {status} {body}")
        status, body = get(url)
        check(status == 401 and "missing_credentials" in body, f"sync, no key: {status} {body}")
        stats = get(f"http://127.0.0.1:{admin_port}/stats?filter=keygate.sync")[1]
        check("wasmcustom.keygate.sync.lease_changes: 1" in stats, f"one lease taken:\n{stats}")
        check(token not in (work / "envoy-sync.log").read_text(), "the token reached the log")
        say("the standalone image's plugin.wasm as istiod would configure wasmplugin-sync.yaml: "
            "keys from a running keygatectl let through, unknown key 401, one VM leads")
    finally:
        if envoy:
            stop(envoy)
        stop(ctl)
        ctl_log.close()


if __name__ == "__main__":
    main()
