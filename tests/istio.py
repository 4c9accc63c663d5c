"""Envoy configured the way istiod configures it for a WasmPlugin, without a cluster: the
HTTP filter alone (no bootstrap extension, no vm_id), named `<namespace>.<name>`, root id
= pluginName, the pluginConfig as JSON, vmConfig.env as the VM's environment variables,
failStrategy as the failure policy (pilot/pkg/model/extensions.go, Istio 1.25+), and the
clusters the filter names called the Istio way (`outbound|8080||host`), each pointing at a
loopback port here."""

import json

import strict_yaml
from harness import ROOT

SYNC_PLUGIN = ROOT / "deploy" / "istio" / "wasmplugin-sync.yaml"
PUSH_PLUGIN = ROOT / "deploy" / "istio" / "wasmplugin.yaml"
STANDALONE_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate-standalone.wasm"
STANDALONE_FAULT_WASM = ROOT / "target" / "keygate-standalone-fault.wasm"

FAILURE_POLICIES = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                    "FAIL_RELOAD": "FAIL_RELOAD"}
# What istiod puts in every VM's environment beside vmConfig.env (WasmResourceVersionEnv).
RESOURCE_VERSION_ENV = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"


def load(path=SYNC_PLUGIN):
    """A shipped WasmPlugin, refusing repeated keys."""
    plugin = strict_yaml.load(path)
    assert plugin["kind"] == "WasmPlugin", path
    return plugin


def wasm_filter(plugin, wasm_path):
    """The HTTP filter istiod makes of `plugin` (a parsed WasmPlugin), loading `wasm_path`."""
    spec = plugin["spec"]
    name = f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"
    env = {"key_values": {RESOURCE_VERSION_ENV: "1"}}
    host_keys = []
    for var in (spec.get("vmConfig") or {}).get("env", []):
        if var.get("valueFrom") == "HOST":
            host_keys.append(var["name"])
        else:
            env["key_values"][var["name"]] = var.get("value", "")
    if host_keys:
        env["host_env_keys"] = host_keys
    config = {
        "name": name,
        "root_id": spec["pluginName"],
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm_path)}},
            "environment_variables": env,
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(spec["pluginConfig"]),
        },
    }
    if spec.get("failStrategy"):
        config["failure_policy"] = FAILURE_POLICIES[spec["failStrategy"]]
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        },
    }


def cluster(name, port):
    """An outbound cluster as Istio names it, to a loopback port (istiod's would be EDS)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def envoy_config(plugin, wasm_path, admin_port, listen_port, upstream_port, clusters):
    """A sidecar's inbound listener with the WasmPlugin's filter before the router, to the
    app on `upstream_port`; `clusters` maps cluster names to loopback ports."""
    app = "inbound|8081||"
    http_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_8081",
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"virtual_hosts": [{
            "name": "inbound|http|8081", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": app}}],
        }]},
        "http_filters": [wasm_filter(plugin, wasm_path), {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": http_manager,
                }]}],
            }],
            "clusters": [cluster(app, upstream_port)]
            + [cluster(name, port) for name, port in clusters.items()],
        },
    }
