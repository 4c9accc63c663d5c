"""The Istio and Envoy Gateway manifests under deploy/, checked as well as this machine
allows without a cluster:

- Istio's WasmPlugins and ServiceEntry, the Gateway, and the Deployment the token patch makes,
  against the CRD and API schemas bundled in the registry's @kubernetes-models packages
  (npm, offline; `make venv` installs them into tests/k8s-validate);
- Envoy Gateway's EnvoyExtensionPolicy and EnvoyProxy have no schema in any registry we can
  reach: their fields are checked against Envoy Gateway's v1alpha1 API by hand (every field
  known, enums, the targetRefs rules);
- what Envoy itself reads from them (the plugin configurations, the merged bootstrap
  cluster) runs in a real Envoy in test_istio_sync.py; YAML with a key given twice is
  refused for every file under deploy/ by test_examples.py."""

import json
import shutil
import subprocess

import pytest

import envoy_gateway
import harness
import istio
import strict_yaml

VALIDATOR = harness.ROOT / "tests" / "k8s-validate"
ISTIO_DIR = harness.ROOT / "deploy" / "istio"
GATEWAY_DIR = harness.ROOT / "deploy" / "envoy-gateway"


def schema_errors(objects):
    """[(kind, [errors])] for each object, from the bundled schemas."""
    node = shutil.which("node")
    if node is None or not (VALIDATOR / "node_modules" / "@kubernetes-models").exists():
        pytest.fail("the schema validator is not installed: `make venv` installs node's "
                    "packages into tests/k8s-validate")
    out = subprocess.run([node, "validate.mjs"], input=json.dumps(objects), cwd=VALIDATOR,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [(r["kind"], r["errors"]) for r in json.loads(out.stdout)]


def documents(directory):
    return [(path.name, doc) for path in sorted(directory.glob("*.yaml"))
            for doc in strict_yaml.load_all(path) if doc and "kind" in doc]


def test_istio_and_gateway_api_objects_match_their_schemas():
    objects = [doc for _, doc in documents(ISTIO_DIR) + documents(GATEWAY_DIR)
               if doc["apiVersion"].split("/")[0] in (
                   "extensions.istio.io", "networking.istio.io", "gateway.networking.k8s.io")]
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert kinds == ["Gateway/eg", "ServiceEntry/keygatectl", "WasmPlugin/keygate",
                     "WasmPlugin/keygate"], kinds
    for kind, errors in schema_errors(objects):
        assert errors == [], f"{kind}: {errors}"


def test_the_validator_refuses_what_the_schemas_refuse():
    """So that a pass above means something."""
    plugin = istio.load(istio.SYNC_PLUGIN)
    plugin["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    plugin["spec"]["vmConfig"]["env"][0]["valueFrom"] = "FILE"
    entry = next(d for _, d in documents(ISTIO_DIR) if d["kind"] == "ServiceEntry")
    entry["spec"]["ports"][0]["number"] = "eighty"
    (plugin_errors, entry_errors) = [e for _, e in schema_errors([plugin, entry])]
    assert any("/spec/failStrategy" in e for e in plugin_errors), plugin_errors
    assert any("/spec/vmConfig/env/0/valueFrom" in e for e in plugin_errors), plugin_errors
    assert any("/spec/ports/0/number" in e for e in entry_errors), entry_errors


def test_the_token_patch_makes_a_valid_deployment():
    """sync-token-env.yaml is a strategic-merge patch: applied to a minimal Deployment of the
    API (the istio-proxy container named as Istio's injector expects), the result is a valid
    Deployment whose proxy container reads the token from the Secret."""
    patch = strict_yaml.load(ISTIO_DIR / "sync-token-env.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "istio-proxy"
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "my-api", "namespace": "my-app"},
        "spec": {
            "selector": {"matchLabels": {"app": "my-api"}},
            "template": {
                "metadata": {"labels": {"app": "my-api"}},
                "spec": {"containers": [{"name": "my-api", "image": "my-api:1"}, container]},
            },
        },
    }
    [(_, errors)] = schema_errors([deployment])
    assert errors == []
    plugin = istio.load(istio.SYNC_PLUGIN)
    (env,) = container["env"]
    assert env["name"] == plugin["spec"]["pluginConfig"]["sync"]["bearer_token_env"]
    assert {"name": env["name"], "valueFrom": "HOST"} in plugin["spec"]["vmConfig"]["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "keygate-sync-token", "key": "sync-token"}


# Envoy Gateway's v1alpha1 API (api/v1alpha1/envoyextensionypolicy_types.go, wasm_types.go,
# envoyproxy_types.go, shared_types.go): the fields each object shipped here may have.
POLICY_FIELDS = {
    "spec": {"targetRef", "targetRefs", "targetSelectors", "mergeType", "wasm", "extProc",
             "lua", "dynamicModule"},
    "wasm": {"name", "rootID", "code", "config", "failOpen", "env"},
    "code": {"type", "http", "image", "configMap", "pullPolicy"},
    "image": {"url", "sha256", "pullSecretRef"},
    "env": {"hostKeys"},
    "targetRef": {"group", "kind", "name", "sectionName"},
}
TARGET_KINDS = {"Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute",
                "TLSRoute"}
ENVOY_PROXY_FIELDS = {
    "spec": {"provider", "logging", "telemetry", "bootstrap", "concurrency", "routingType",
             "extraArgs", "mergeGateways", "mergeBackends", "shutdown", "filterOrder",
             "backendTLS", "ipFamily", "preserveRouteOrder"},
    "provider": {"type", "kubernetes", "host"},
    "kubernetes": {"envoyDeployment", "envoyDaemonSet", "envoyService", "envoyHpa",
                   "envoyPDB", "useListenerPortAsContainerPort", "envoyServiceAccount"},
    "envoyDeployment": {"patch", "replicas", "strategy", "pod", "container", "initContainers",
                        "name"},
    "container": {"env", "resources", "securityContext", "image", "imageRepository",
                  "volumeMounts"},
    "bootstrap": {"type", "value", "jsonPatches"},
}


def test_envoy_gateway_objects_have_only_fields_of_its_api():
    docs = dict(((d["kind"], d) for _, d in documents(GATEWAY_DIR)))
    policy, proxy = docs["EnvoyExtensionPolicy"], docs["EnvoyProxy"]
    for doc in (policy, proxy):
        assert doc["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}

    spec = policy["spec"]
    assert set(spec) <= POLICY_FIELDS["spec"]
    # CEL rules of the CRD: targetRef or targetRefs, group gateway.networking.k8s.io, a kind
    # of route or gateway.
    assert ("targetRef" in spec) != ("targetRefs" in spec)
    for ref in spec.get("targetRefs", [spec.get("targetRef")]):
        assert set(ref) <= POLICY_FIELDS["targetRef"]
        assert ref["group"] == "gateway.networking.k8s.io" and ref["kind"] in TARGET_KINDS
    (wasm,) = spec["wasm"]
    assert set(wasm) <= POLICY_FIELDS["wasm"] and {"code"} <= set(wasm)
    assert set(wasm["code"]) <= POLICY_FIELDS["code"]
    assert wasm["code"]["type"] == "Image" and "image" in wasm["code"] and "http" not in wasm["code"]
    assert set(wasm["code"]["image"]) <= POLICY_FIELDS["image"] and "url" in wasm["code"]["image"]
    assert set(wasm["env"]) <= POLICY_FIELDS["env"]
    assert all(isinstance(k, str) for k in wasm["env"]["hostKeys"])
    assert isinstance(wasm["failOpen"], bool) and isinstance(wasm["config"], dict)

    spec = proxy["spec"]
    assert set(spec) <= ENVOY_PROXY_FIELDS["spec"]
    assert set(spec["provider"]) <= ENVOY_PROXY_FIELDS["provider"]
    assert spec["provider"]["type"] == "Kubernetes"
    kubernetes = spec["provider"]["kubernetes"]
    assert set(kubernetes) <= ENVOY_PROXY_FIELDS["kubernetes"]
    assert set(kubernetes["envoyDeployment"]) <= ENVOY_PROXY_FIELDS["envoyDeployment"]
    container = kubernetes["envoyDeployment"]["container"]
    assert set(container) <= ENVOY_PROXY_FIELDS["container"]
    assert set(spec["bootstrap"]) <= ENVOY_PROXY_FIELDS["bootstrap"]
    assert spec["bootstrap"]["type"] in {"Merge", "Replace", "JSONPatch"}
    assert isinstance(spec["bootstrap"]["value"], str)
    # The container's env entries are Kubernetes EnvVars: checked against that schema in a
    # Deployment, as the token patch is.
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "envoy"},
        "spec": {"selector": {"matchLabels": {"app": "envoy"}}, "template": {
            "metadata": {"labels": {"app": "envoy"}},
            "spec": {"containers": [{"name": "envoy", "image": "envoy", "env": container["env"]}]},
        }},
    }
    [(_, errors)] = schema_errors([deployment])
    assert errors == []
    # The Gateway refers to this EnvoyProxy, in its own namespace.
    gateway = docs["Gateway"]
    assert gateway["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": proxy["metadata"]["name"]}
    assert gateway["metadata"]["namespace"] == proxy["metadata"]["namespace"]
    assert policy["spec"]["targetRefs"][0]["name"] == gateway["metadata"]["name"]


def test_both_platforms_ship_the_same_filter_settings():
    """The sync WasmPlugin, the push WasmPlugin and the Envoy Gateway policy configure one
    filter the same way (plugin-config.base.json), and poll keygatectl the same way."""
    base = json.loads((ISTIO_DIR / "plugin-config.base.json").read_text())
    sync_plugin = istio.load(istio.SYNC_PLUGIN)["spec"]["pluginConfig"]
    push_plugin = istio.load(istio.PUSH_PLUGIN)["spec"]["pluginConfig"]
    gateway = envoy_gateway.policy()["spec"]["wasm"][0]["config"]
    for config in (sync_plugin, push_plugin, gateway):
        assert {k: v for k, v in config.items() if k not in ("sync", "keys")} == base
    istio_sync, gateway_sync = dict(sync_plugin["sync"]), dict(gateway["sync"])
    assert istio_sync.pop("cluster") == "outbound|8080||keygatectl.keygate.svc.cluster.local"
    assert gateway_sync.pop("cluster") == "keygatectl"
    assert istio_sync == gateway_sync
