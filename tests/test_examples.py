"""The files people copy, checked as shipped:

- every YAML file under envoy/ and deploy/ (found by walking both trees, so a new file is
  covered without a change here) loads with the strict loader, which refuses a key given
  twice in one mapping (YAML and Envoy would silently keep the last);
- every Envoy config among them passes `envoy --mode validate` from the file itself, run
  from the repository root where its module paths point (the compose configs' container
  paths, /opt/keygate/, replaced as text by the build directory).

test_shipped.py runs the same files with traffic."""

import re
import subprocess

import pytest

import harness
import strict_yaml

DEPLOY_DIR = harness.ROOT / "deploy"
YAML_FILES = sorted(
    p for tree in (harness.ENVOY_DIR, DEPLOY_DIR) for p in tree.rglob("*")
    if p.suffix in (".yaml", ".yml") and p.is_file()
)
# An Envoy bootstrap config, told from its text (a file that does not load must still be
# collected, so that its own test fails rather than the collection).
ENVOY_CONFIGS = [p for p in YAML_FILES
                 if re.search(r"^(static_resources|dynamic_resources):", p.read_text(), re.M)]
# Where the compose stack mounts the built modules, and where `make build` puts them (the
# native module first: its directory is another).
CONTAINER_PATHS = {"/opt/keygate/libkeygate_native.so": str(harness.NATIVE),
                   "/opt/keygate/": f"{harness.SYNC_WASM.parent}/"}


def name(path):
    return str(path.relative_to(harness.ROOT))


def test_the_walk_finds_the_shipped_files():
    found = {name(p) for p in YAML_FILES}
    assert {
        "envoy/envoy.yaml", "envoy/envoy-sync.yaml", "envoy/envoy-replicas.yaml",
        "envoy/envoy-ecds.yaml", "envoy/keygate-filter.yaml", "envoy/envoy-native.yaml",
        "envoy/envoy-native-sync.yaml", "envoy/docker-compose.yaml", "envoy/compose/envoy.yaml",
        "envoy/docker-compose.native.yaml", "envoy/compose/envoy-native.yaml",
        "envoy/compose/upstream.yaml", "deploy/k8s/keygatectl.yaml",
        "deploy/istio/wasmplugin.yaml",
    } <= found, found
    assert {name(p) for p in ENVOY_CONFIGS} >= {
        "envoy/envoy.yaml", "envoy/envoy-sync.yaml", "envoy/envoy-replicas.yaml",
        "envoy/envoy-ecds.yaml", "envoy/envoy-native.yaml", "envoy/envoy-native-sync.yaml",
        "envoy/compose/envoy.yaml", "envoy/compose/envoy-native.yaml",
        "envoy/compose/upstream.yaml",
    }


@pytest.mark.parametrize("path", YAML_FILES, ids=name)
def test_no_yaml_file_repeats_a_key(path):
    documents = strict_yaml.load_all(path)
    assert any(doc is not None for doc in documents), f"{name(path)} holds no document"


@pytest.mark.parametrize("text", [
    # The shape of the bug that was shipped: a second `clusters:` replaced the first.
    "static_resources:\n  clusters: [{name: a}]\n  listeners: []\n  clusters: [{name: b}]\n",
    "a:\n  b:\n    c: 1\n    c: 2\n",              # deep in the tree
    "{a: 1, a: 2}\n",                               # flow style
    "- {x: 1}\n- x: 1\n  y: 2\n  x: 3\n",           # inside a list
    "---\nok: 1\n---\nk: 1\nk: 2\n",                # in a later document of a stream
    "base: &b {a: 1}\nd:\n  <<: *b\n  e: 2\n  e: 3\n",  # beside a merge key
    "1: a\n1: b\n",                                 # non-string keys
])
def test_the_loader_refuses_a_repeated_key(text):
    with pytest.raises(strict_yaml.DuplicateKeyError, match="found duplicate key"):
        strict_yaml.load_all(text)


def test_the_loader_reads_what_plain_yaml_reads():
    text = "a: 1\nb: {c: [1, 2], d: x}\nbase: &b {e: 1}\nf:\n  <<: *b\n  e: 2\n---\ng: 1\n"
    import yaml

    assert strict_yaml.load_all(text) == list(yaml.safe_load_all(text))


@pytest.mark.parametrize("path", ENVOY_CONFIGS, ids=name)
def test_every_envoy_config_validates_as_shipped(path, tmp_path):
    text = path.read_text()
    config = path
    if any(old in text for old in CONTAINER_PATHS):
        for old, new in CONTAINER_PATHS.items():
            text = text.replace(old, new)
        config = tmp_path / path.name
        config.write_text(text)
    out = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(config)],
                         capture_output=True, text=True, timeout=120, cwd=harness.ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"configuration '{config}' OK" in out.stdout + out.stderr
