"""deploy/k8s/keygatectl.yaml as shipped: keygatectl started with the Deployment's own
arguments and environment (only the Secrets' mount paths, the database directory and the
listen address swapped for a temporary directory and a loopback port) answers the Service's
names, requires the sync token from its Secret, and refuses other Host names."""

import http.client
import os
import re
import subprocess
import time

import yaml

from ctl import CTL
from harness import ROOT

MANIFEST = ROOT / "deploy" / "k8s" / "keygatectl.yaml"


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


def test_the_deployment_s_arguments_answer_the_service_s_names_with_the_sync_token(tmp_path):
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Each Secret volume's files, written where the test can read them.
    secret_of_volume = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    tokens = {"keygatectl-admin-token": "kgadm_" + os.urandom(16).hex(),
              "keygatectl-sync-token": "kgsync_" + os.urandom(16).hex()}
    paths = {}
    for mount in container["volumeMounts"]:
        secret = secret_of_volume.get(mount["name"])
        if secret:
            key = next(k for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == secret
                       for k in d["stringData"])
            local = tmp_path / mount["name"]
            local.mkdir()
            (local / key).write_text(tokens[secret] + "\n")
            paths[mount["mountPath"]] = str(local)
        elif mount["mountPath"] == "/var/lib/keygate":
            paths[mount["mountPath"]] = str(tmp_path / "data")
    (tmp_path / "data").mkdir()

    def local(value):
        # Longest first: /run/secrets/keygate is a prefix of /run/secrets/keygate-sync.
        for mount_path, here in sorted(paths.items(), key=lambda p: -len(p[0])):
            value = value.replace(mount_path, here)
        return value.replace("0.0.0.0:8080", "127.0.0.1:0")

    args = [local(a) for a in container["args"]]
    env = {e["name"]: local(e["value"]) for e in container["env"]}
    log_path = tmp_path / "keygatectl.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(CTL), *args], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **env))
    try:
        deadline = time.monotonic() + 15
        while not (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text())):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        port = int(m.group(1))
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        service_port = service["spec"]["ports"][0]["port"]
        sync = tokens["keygatectl-sync-token"]
        for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                     f"{name}.{namespace}.svc.cluster.local"):
            assert get(port, "/v1/keymap", f"{host}:{service_port}", sync) == 200, host
        assert get(port, "/v1/keymap", f"{name}.{namespace}.svc:{service_port}") == 401
        assert get(port, "/v1/keymap", "rebind.example", sync) == 421
        # The kubelet's probes name the pod's address.
        assert get(port, "/healthz", f"10.1.2.3:{service_port}") == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
