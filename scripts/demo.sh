#!/usr/bin/env bash
# `make run`: keygatectl (SQLite) + Envoy (2 workers) syncing its key map from it + a demo
# API. Prints a fresh account's keys (shown this once) and curl commands; Ctrl-C stops all.
# Customers sign up at http://127.0.0.1:8080/signup: their mail (sign-up links, password
# resets) is written to .run/outbox/*.eml instead of being sent, and each link is printed here.
# KEYGATE_FRONTEND=native runs the native module (envoy-native-sync.yaml) instead of the
# wasm filter and its fetcher service (envoy-sync.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=.run
CTL=target/release/keygatectl
ENVOY=${ENVOY:-$(command -v envoy || echo .venv/bin/envoy)}
DB=$RUN/keygate.db
API=http://127.0.0.1:10000
case "${KEYGATE_FRONTEND:-wasm}" in
  wasm) ENVOY_CONFIG=envoy/envoy-sync.yaml ;;
  native) ENVOY_CONFIG=envoy/envoy-native-sync.yaml ;;
  *) echo "KEYGATE_FRONTEND must be wasm or native" >&2; exit 1 ;;
esac
mkdir -p "$RUN"

for port in 8080 8081 9901 10000; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use: stop whatever listens there (an earlier 'make run'?)" >&2
    exit 1
  fi
done

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# The admin token lives in a file readable only by you; keygatectl stores its digest.
if [ ! -s "$RUN/admin-token" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$RUN/admin-token")
fi

# The key map needs the sync token: keygatectl keeps it in $DB.sync-token (made on first
# use, readable only by you). Envoy gets a copy of its example config with the token filled
# in where the example's bearer_token placeholder is.
"$CTL" --database "$DB" sync-token render "$ENVOY_CONFIG" --output "$RUN/envoy.yaml"

"$CTL" --database "$DB" serve --listen 127.0.0.1:8080 --purge-interval 2s \
  --admin-token-file "$RUN/admin-token" --outbox "$RUN/outbox" > "$RUN/keygatectl.log" 2>&1 &
pids+=($!)
.venv/bin/python tests/upstream.py --port 8081 > "$RUN/upstream.log" 2>&1 &
pids+=($!)
"$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --disable-hot-restart \
  --log-level warn > "$RUN/envoy.log" 2>&1 &
pids+=($!)

# A fresh demo account: its four keys are printed here once and stored nowhere.
keys_json=$("$CTL" --database "$DB" --json account create --name "demo $(date +%H:%M:%S)")
eval "$(printf '%s' "$keys_json" | .venv/bin/python -c '
import json, sys
doc = json.load(sys.stdin)
for k in doc["keys"]:
    name = ("SK" if k["type"] == "secret" else "PK") + ("_TEST" if k["environment"] == "test" else "_LIVE")
    print(name + "=" + k["key"] + "; " + name + "_ID=" + k["key_id"])
print("ACCOUNT=" + doc["account"]["id"])
')"

# Every new mail in the outbox: who it is for, its subject and its links, on this terminal.
watch_outbox() {
  .venv/bin/python - "$RUN/outbox" <<'PY'
import email, email.policy, pathlib, re, sys, time
box = pathlib.Path(sys.argv[1])
seen = {p.name for p in box.glob("*.eml")}
while True:
    for path in sorted(box.glob("*.eml"), key=lambda p: p.stat().st_mtime):
        if path.name in seen:
            continue
        try:
            mail = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            text = mail.get_body(preferencelist=("plain",)).get_content()
        except Exception:
            continue  # still being written: next round
        seen.add(path.name)
        links = "".join(f"\n  {link}" for link in re.findall(r"https?://\S+", text))
        print(f"\n[mail to {mail['to']}] {mail['subject']} ({path}){links}", flush=True)
    time.sleep(0.5)
PY
}
mkdir -p "$RUN/outbox" && chmod 700 "$RUN/outbox"
watch_outbox &
pids+=($!)

for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: token $SK_TEST" "$API/v3/devices" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done
if [ "${code:-}" != 200 ]; then
  echo "the stack did not come up; logs in $RUN/" >&2
  tail -n 20 "$RUN"/*.log >&2
  exit 1
fi

cat <<MSG

keygate demo is up ($ENVOY_CONFIG; logs in $RUN/):
  API through Envoy   $API          (Envoy admin: http://127.0.0.1:9901/stats?filter=keygate)
  keygatectl          http://127.0.0.1:8080  (admin token in $RUN/admin-token; the key map's
                      sync token in $DB.sync-token, filled into $RUN/envoy.yaml)
  operator page       http://127.0.0.1:8080/ui/  (sign in with the token in $RUN/admin-token)
  customer sign-up    http://127.0.0.1:8080/signup  (mail goes to $RUN/outbox/; links appear below)
  demo upstream       http://127.0.0.1:8081  (answers with what it received)

Account $ACCOUNT; its keys, shown this once (keygatectl keeps only their digests):
  secret test           $SK_TEST
  publishable test      $PK_TEST
  secret production     $SK_LIVE
  publishable production $PK_LIVE

Try:
  curl -i $API/v3/devices -H 'Authorization: token $SK_TEST'          # 200: secret keys may list
  curl -i $API/v3/devices/dev_1 -H 'Authorization: token $PK_TEST'    # 200: publishable retrieves by id
  curl -i $API/v3/devices -H 'Authorization: token $PK_TEST'          # 403 insufficient_permissions
  curl -i -X POST $API/v3/devices/dev_1/events -H 'Authorization: token $PK_LIVE'  # 200: an SDK write rule
  curl -i $API/v3/devices -u '$SK_LIVE:'                               # 200: Basic, as curl -u sends
  curl -i $API/v3/devices -u '$ACCOUNT:$SK_LIVE'                      # 200: Basic account_id:key
  curl -i $API/v3/devices                                              # 401 missing_credentials
  curl -i $API/v3/devices -H 'Authorization: token sk_test_nope'       # 401 invalid_api_key

Roll the secret test key and watch the old one stop working (within about two seconds:
keygatectl notices the file change within a second, Envoy polls every second):
  $CTL --database $DB key roll $SK_TEST_ID
  curl -i $API/v3/devices -H 'Authorization: token $SK_TEST'          # 401 invalid_api_key
Or keep it working for a grace period:  ... key roll <key_id> --expires-in 1m
Or roll it on the operator page: http://127.0.0.1:8080/ui/ → the account → Roll.
Or be a customer: sign up at http://127.0.0.1:8080/signup, open the link printed below, and
take your own keys from Settings → Account (roll them there too).
Other commands: $CTL --database $DB key list | key revoke <id> | key disable <id> | --help

Ctrl-C stops everything.
MSG
wait
