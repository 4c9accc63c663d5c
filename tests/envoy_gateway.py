"""Envoy configured the way Envoy Gateway configures it for deploy/envoy-gateway/, without a
cluster: the EnvoyExtensionPolicy's Wasm filter on the listener's HTTP connection manager,
disabled there and enabled on each route (internal/xds/translator/wasm.go), its VM keyed by
the extension's name (vm_id), `env.hostKeys` as the VM's host environment variables,
`failOpen` false, and the keygatectl cluster the EnvoyProxy merges into the bootstrap, with
only its address turned into a loopback port."""

import json

import strict_yaml
from harness import ROOT

POLICY = ROOT / "deploy" / "envoy-gateway" / "extension-policy.yaml"
ENVOY_PROXY = ROOT / "deploy" / "envoy-gateway" / "envoyproxy.yaml"


def documents(path):
    return [doc for doc in strict_yaml.load_all(path) if doc]


def policy():
    (doc,) = [d for d in documents(POLICY) if d["kind"] == "EnvoyExtensionPolicy"]
    return doc


def bootstrap_clusters():
    """The clusters the shipped EnvoyProxy adds to the bootstrap, by name."""
    (proxy,) = [d for d in documents(ENVOY_PROXY) if d["kind"] == "EnvoyProxy"]
    assert proxy["spec"]["bootstrap"]["type"] == "Merge"
    merged = strict_yaml.load(proxy["spec"]["bootstrap"]["value"])
    return {c["name"]: c for c in merged["static_resources"]["clusters"]}


def proxy_env(name):
    """The proxy container's environment variable `name` as the shipped EnvoyProxy sets it."""
    (proxy,) = [d for d in documents(ENVOY_PROXY) if d["kind"] == "EnvoyProxy"]
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    return next(v for v in container["env"] if v["name"] == name)


def wasm_filter(extension, wasm_path):
    """The HCM filter Envoy Gateway makes of one `spec.wasm[]` entry (disabled by default;
    each route of the policy's targets enables it)."""
    vm_config = {
        "vm_id": extension["name"],
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm_path)}},
    }
    if extension.get("env", {}).get("hostKeys"):
        vm_config["environment_variables"] = {"host_env_keys": extension["env"]["hostKeys"]}
    config = {
        "name": extension["name"],
        "root_id": extension["rootID"],
        "vm_config": vm_config,
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(extension["config"])},
        "fail_open": bool(extension.get("failOpen", False)),
    }
    return {
        "name": filter_name(extension),
        "disabled": True,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                         "config": config},
    }


def filter_name(extension):
    return f"envoy.filters.http.wasm/{extension['name']}"


def loopback(cluster, port):
    """`cluster` as shipped, its one endpoint's address made 127.0.0.1:`port` (STATIC)."""
    cluster = json.loads(json.dumps(cluster))
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    (endpoint,) = [e for group in cluster["load_assignment"]["endpoints"]
                   for e in group["lb_endpoints"]]
    endpoint["endpoint"]["address"]["socket_address"].update(
        {"address": "127.0.0.1", "port_value": port})
    return cluster


def envoy_config(wasm_path, admin_port, listen_port, upstream_port, keygatectl_port):
    extension = policy()["spec"]["wasm"][0]
    clusters = [loopback(c, keygatectl_port) for c in bootstrap_clusters().values()]
    backend = "httproute/default/my-api/rule/0"
    http_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http-10080",
        "route_config": {"virtual_hosts": [{
            "name": "default/eg/http", "domains": ["*"],
            "routes": [{
                "name": "httproute/default/my-api/rule/0/match/0/*",
                "match": {"prefix": "/"},
                "route": {"cluster": backend},
                "typed_per_filter_config": {filter_name(extension): {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}}},
            }],
        }]},
        "http_filters": [wasm_filter(extension, wasm_path), {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    app = {"name": backend, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": backend, "endpoints": [{"lb_endpoints": [{
               "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": upstream_port}}}}]}]}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "default/eg/http",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": http_manager,
                }]}],
            }],
            "clusters": clusters + [app],
        },
    }
