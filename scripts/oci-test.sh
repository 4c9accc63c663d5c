#!/usr/bin/env bash
# Builds the filter's OCI images (deploy/oci/Dockerfile: the "compat" Wasm image Istio pulls)
# with a private dockerd: keygate.wasm, and keygate-standalone.wasm (--build-arg MODULE=),
# saves them, and checks what Istio's fetcher reads: each image's last (here: only) layer is
# a tar holding plugin.wasm, identical (sha256) to the built module. Then runs those
# plugin.wasm files in Envoy configured as istiod would configure them from
# deploy/istio/wasmplugin.yaml (push mode, keys from `keygatectl export`) and
# deploy/istio/wasmplugin-sync.yaml (sync mode, polling a running keygatectl), on 127.0.0.1.
# Removes the image and stops the engine: nothing is left behind, nothing pulled or pushed.
#
#   make oci-test            (after `make build venv`; needs root)
#
# Environment: OCI_TEST_STATE (/tmp/keygate-oci-test): the engine's state, deleted at the end.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
ROOT=$PWD

KG_NAME=oci-test
KG_STATE=${OCI_TEST_STATE:-/tmp/keygate-oci-test}
# shellcheck source-path=SCRIPTDIR/..
. deploy/test/private-dockerd.sh

WASM_DIR=$ROOT/target/wasm32-wasip1/release
WASM=$WASM_DIR/keygate.wasm
STANDALONE=$WASM_DIR/keygate-standalone.wasm
CTL=$ROOT/target/release/keygatectl
PYTHON=$ROOT/.venv/bin/python
IMAGE=keygate-local/keygate-wasm:oci-test
STANDALONE_IMAGE=keygate-local/keygate-standalone-wasm:oci-test

kg_lock "$0"

teardown_engine() {
    if [ -S "$KG_STATE/docker.sock" ] && DOCKER_HOST="unix://$KG_STATE/docker.sock" /usr/bin/docker version >/dev/null 2>&1; then
        export DOCKER_HOST="unix://$KG_STATE/docker.sock" DOCKER_CONFIG="$KG_STATE/docker-config"
        kg_docker_purge
    fi
    kg_dockerd_stop
}
finished=0
cleanup() {
    local rc=$?
    set +e
    if [ "$finished" != 1 ]; then
        teardown_engine
        [ "$rc" = 0 ] || printf '%s FAILED (%ss); the engine is stopped and %s removed\n' \
            "$KG_NAME:" "$(( $(date +%s) - kg_t0 ))" "$KG_STATE" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

kg_step "preflight"
[ -f "$WASM" ] || kg_die "$WASM missing: run make build"
[ -f "$STANDALONE" ] || kg_die "$STANDALONE missing: run make build"
[ -x "$CTL" ] || kg_die "$CTL missing: run make build"
[ -x "$PYTHON" ] || kg_die "$PYTHON missing: run make venv"
kg_require_docker engine
if [ -e "$KG_STATE" ]; then
    kg_log "an earlier run left $KG_STATE: taking it down"
    teardown_engine
fi
kg_dockerd_start

kg_step "build $IMAGE and $STANDALONE_IMAGE (deploy/oci/Dockerfile, context $WASM_DIR)"
docker build -q -f deploy/oci/Dockerfile -t "$IMAGE" "$WASM_DIR" >/dev/null
kg_ok "built: $(docker image inspect --format '{{.Id}} {{.Size}} bytes' "$IMAGE")"
docker build -q -f deploy/oci/Dockerfile --build-arg MODULE=keygate-standalone.wasm \
    -t "$STANDALONE_IMAGE" "$WASM_DIR" >/dev/null
kg_ok "built: $(docker image inspect --format '{{.Id}} {{.Size}} bytes' "$STANDALONE_IMAGE")"

# IMAGE MODULE EXTRACTED: the image's one layer holds only plugin.wasm, equal to MODULE.
check_image() {
docker save -o "$KG_STATE/image.tar" "$1"
python3 - "$KG_STATE/image.tar" "$2" "$3" <<'EOF'
"""What Istio's image fetcher does with a compat image: take the last layer, walk the tar
and read the entry whose base name is plugin.wasm. Here also: there is one layer, holding
that one file, and it is the built module."""
import hashlib, io, json, os, sys, tarfile

saved, wasm, extracted = sys.argv[1], sys.argv[2], sys.argv[3]
want = hashlib.sha256(open(wasm, "rb").read()).hexdigest()
with tarfile.open(saved) as image:
    manifest = json.load(image.extractfile("manifest.json"))
    assert len(manifest) == 1, f"{len(manifest)} images in the archive"
    layers = manifest[0]["Layers"]
    assert len(layers) == 1, f"expected a single layer, found {len(layers)}: {layers}"
    config = json.load(image.extractfile(manifest[0]["Config"]))
    layer_bytes = image.extractfile(layers[-1]).read()
with tarfile.open(fileobj=io.BytesIO(layer_bytes), mode="r:*") as layer:
    members = [m for m in layer.getmembers() if not m.isdir()]
    names = [m.name for m in members]
    assert [os.path.basename(n) for n in names] == ["plugin.wasm"], f"layer holds {names}"
    member = members[0]
    assert member.isfile(), f"{member.name} is not a regular file"
    module = layer.extractfile(member).read()
    got = hashlib.sha256(module).hexdigest()
open(extracted, "wb").write(module)
assert got == want, f"plugin.wasm {got} != keygate.wasm {want}"
print(f"oci-test: layer {layers[0]}: {names[0]} ({member.size} bytes, mode {member.mode:o})")
print(f"oci-test: sha256 {got} = {os.path.relpath(wasm)}")
print(f"oci-test: os/arch {config.get('os')}/{config.get('architecture')}, "
      f"labels {sorted((config.get('config') or {}).get('Labels') or {})}")
EOF
}

kg_step "check the saved images"
check_image "$IMAGE" "$WASM" "$KG_STATE/plugin.wasm"
kg_ok "one layer, holding only plugin.wasm, byte-identical to keygate.wasm"
check_image "$STANDALONE_IMAGE" "$STANDALONE" "$KG_STATE/standalone-plugin.wasm"
kg_ok "one layer, holding only plugin.wasm, byte-identical to keygate-standalone.wasm"

kg_step "the images' plugin.wasm as Istio would run them (wasmplugin.yaml, wasmplugin-sync.yaml)"
"$PYTHON" deploy/test/istio_push_check.py "$KG_STATE/plugin.wasm" \
    "$KG_STATE/standalone-plugin.wasm" "$KG_STATE/istio"
kg_ok "push mode works; sync mode from the filter alone works; keygate.wasm's fetcher-service mode fails closed (503)"

kg_step "teardown"
kg_docker_purge
kg_docker_verify_clean
kg_dockerd_stop
kg_ok "dockerd stopped, $KG_STATE removed"
finished=1
printf '\n%s passed in %ss\n' "$KG_NAME:" "$(( $(date +%s) - kg_t0 ))"
printf '%s %d passed, 0 failed\n' "$KG_NAME:" "$kg_passed"
