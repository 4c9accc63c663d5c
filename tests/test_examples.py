"""Every example Envoy config under envoy/ passes `envoy --mode validate` with the built
modules (the compose configs with their container paths pointed at the build)."""

import subprocess

import pytest
import yaml

import harness

EXAMPLES = sorted(
    p for p in list(harness.ENVOY_DIR.glob("*.yaml")) + list(harness.ENVOY_DIR.glob("compose/*.yaml"))
    if "static_resources" in yaml.safe_load(p.read_text())
)


def test_every_bootstrap_example_is_found():
    names = {p.name for p in EXAMPLES}
    assert {"envoy.yaml", "envoy-sync.yaml", "envoy-ecds.yaml", "envoy-replicas.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(harness.ENVOY_DIR)))
def test_example_validates(example, tmp_path):
    config = harness.localize(yaml.safe_load(example.read_text()), {})
    path = tmp_path / example.name
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=harness.ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
