"""deploy/k8s/ as shipped:

- every manifest passes the Kubernetes API schemas strictly (kubernetes-validate, from PyPI:
  the OpenAPI schemas of Kubernetes releases, unknown fields refused), which no cluster here
  could check otherwise;
- keygatectl.yaml: two replicas on PostgreSQL over TLS, a PodDisruptionBudget that keeps one,
  probes on /readyz and /livez. Two keygatectl processes are started with the Deployment's
  own arguments and environment (the Secrets' and the CA's mount paths, the database URL's
  host and the listen address swapped for the test's): both are ready on the readiness
  probe's path, reach the test PostgreSQL over TLS with its certificate checked, answer the
  Service's names with the sync token, and refuse other Host names;
- keygatectl-sqlite.yaml: the one-replica SQLite variant, the same way on a temporary file."""

import copy
import http.client
import os
import re
import subprocess
import time
import urllib.parse

import kubernetes_validate
import pytest
import yaml

from ctl import CTL
from harness import ROOT, spawn, stop_process
from pg import TLS_DIR, database  # noqa: F401

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# The oldest Kubernetes release still widely run that has every API used (policy/v1 PDB).
KUBERNETES = "1.30.0"


def docs_of(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def get(port, path, host, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Host": host}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_the_kubernetes_schemas(path):
    for doc in docs_of(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_check_refuses_what_kubernetes_would():
    deployment = next(d for d in docs_of(K8S / "keygatectl.yaml") if d["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES, strict=True)


class Pod:
    """The Deployment's container run as a local keygatectl: its args and env, with mount
    paths mapped into `tmp_path` and values changed by `env_override`."""

    def __init__(self, docs, tmp_path, name, tokens, env_override=None, files=None):
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        self.container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.dir = tmp_path / name
        self.dir.mkdir()
        paths = {}
        for mount in self.container["volumeMounts"]:
            volume = volumes[mount["name"]]
            local = self.dir / mount["name"]
            local.mkdir()
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                key = next(k for d in docs if d["kind"] == "Secret"
                           and d["metadata"]["name"] == secret for k in d["stringData"])
                (local / key).write_text(tokens[secret] + "\n")
            for file_name, content in (files or {}).get(mount["name"], {}).items():
                (local / file_name).write_bytes(content)
            paths[mount["mountPath"]] = str(local)

        # One pass over the text, longest mount path first (/run/secrets/keygate is a
        # prefix of /run/secrets/keygate-sync), so a local path is never mapped again.
        mounts = re.compile("|".join(re.escape(m) + r"(?=/|$|&)" for m in
                                     sorted(paths, key=len, reverse=True)))

        def here(value):
            value = mounts.sub(lambda m: paths[m.group(0)], value)
            return value.replace("0.0.0.0:8080", "127.0.0.1:0")

        self.here = here
        self.args = [here(a) for a in self.container["args"]]
        self.env = {}
        for e in self.container.get("env", []):
            value = (env_override or {}).get(e["name"], e.get("value"))
            assert value is not None, f"{e['name']}: no value for the test"
            self.env[e["name"]] = here(value)
        self.log_path = self.dir / "keygatectl.log"
        self.proc = None
        self.port = None

    def start(self):
        with open(self.log_path, "wb") as log:
            self.proc = spawn([str(CTL), *self.args], stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, **self.env))
        deadline = time.monotonic() + 20
        while not (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)",
                                  self.log_path.read_text())):
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.05)
        self.port = int(m.group(1))
        return self

    def probe(self, kind):
        """The status of the container's probe of `kind` (readinessProbe, livenessProbe),
        sent as the kubelet sends it: to the pod's address."""
        return get(self.port, self.container[kind]["httpGet"]["path"], "10.1.2.3:8080")

    def stop(self):
        if self.proc:
            stop_process(self.proc)


def check_service_names(pod, service, sync_token):
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]["port"]
    for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                 f"{name}.{namespace}.svc.cluster.local"):
        assert get(pod.port, "/v1/keymap", f"{host}:{port}", sync_token) == 200, host
    assert get(pod.port, "/v1/keymap", f"{name}.{namespace}.svc:{port}") == 401
    assert get(pod.port, "/v1/keymap", "rebind.example", sync_token) == 421


def wait_ready(pod):
    deadline = time.monotonic() + 20
    while pod.probe("readinessProbe") != 200:
        assert time.monotonic() < deadline, pod.log_path.read_text()
        time.sleep(0.1)


def test_two_replicas_on_postgresql_over_tls_as_the_manifest_runs_them(database, tmp_path):
    docs = docs_of(K8S / "keygatectl.yaml")
    kinds = {d["kind"]: d for d in docs}
    deployment, pdb, service = kinds["Deployment"], kinds["PodDisruptionBudget"], kinds["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    # The database URL comes from its Secret (it holds the password), with TLS checked.
    env = {e["name"]: e for e in container["env"]}
    ref = env["KEYGATE_DATABASE"]["valueFrom"]["secretKeyRef"]
    shipped_url = next(d for d in docs if d["kind"] == "Secret"
                       and d["metadata"]["name"] == ref["name"])["stringData"][ref["key"]]
    shipped = urllib.parse.urlsplit(shipped_url)
    query = urllib.parse.parse_qs(shipped.query)
    assert query["sslmode"] == ["verify-full"], shipped_url
    # The test's database at the same place in the URL; its CA where the ConfigMap goes.
    assert TLS_DIR, "the test PostgreSQL has TLS (scripts/postgres.sh run)"
    test = urllib.parse.urlsplit(database.url)
    address = urllib.parse.parse_qs(test.query)["hostaddr"][0]
    url = urllib.parse.urlunsplit((shipped.scheme, f"{test.username}@localhost:{test.port}",
                                   test.path, shipped.query + f"&hostaddr={address}", ""))
    ca_mount = next(m for m in container["volumeMounts"]
                    if query["sslrootcert"][0].startswith(m["mountPath"] + "/"))
    ca_file = query["sslrootcert"][0][len(ca_mount["mountPath"]) + 1:]
    with open(os.path.join(TLS_DIR, "ca.crt"), "rb") as f:
        ca = f.read()
    tokens = {"keygatectl-admin-token": "kgadm_" + os.urandom(16).hex(),
              "keygatectl-sync-token": "kgsync_" + os.urandom(16).hex()}
    pods = []
    try:
        for i in range(deployment["spec"]["replicas"]):
            pods.append(Pod(docs, tmp_path, f"pod{i}", tokens, {"KEYGATE_DATABASE": url},
                            {ca_mount["name"]: {ca_file: ca}}).start())
        for pod in pods:
            wait_ready(pod)
            assert pod.probe("livenessProbe") == 200
            check_service_names(pod, service, tokens["keygatectl-sync-token"])
        sessions = database.keygatectl_sessions()
        assert len(sessions) >= 2 * len(pods), sessions
        assert all(tls for tls, _ in sessions), sessions
        # The log is JSON, as the manifest asks.
        for pod in pods:
            first = pod.log_path.read_text().splitlines()[0]
            assert first.startswith('{"'), first
    finally:
        for pod in pods:
            pod.stop()


def test_the_sqlite_variant_answers_the_service_s_names_with_the_sync_token(tmp_path):
    docs = docs_of(K8S / "keygatectl-sqlite.yaml")
    service = next(d for d in docs if d["kind"] == "Service")
    tokens = {"keygatectl-admin-token": "kgadm_" + os.urandom(16).hex(),
              "keygatectl-sync-token": "kgsync_" + os.urandom(16).hex()}
    # The database on the PVC's mount, mapped into the test's directory like the others.
    pod = Pod(docs, tmp_path, "pod", tokens).start()
    try:
        wait_ready(pod)
        assert pod.probe("livenessProbe") == 200
        check_service_names(pod, service, tokens["keygatectl-sync-token"])
    finally:
        pod.stop()
