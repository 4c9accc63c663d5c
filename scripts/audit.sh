#!/usr/bin/env bash
# Dependency audit of keygate's lock files (Cargo.lock, core/fuzz/Cargo.lock) with cargo-deny
# and the policy in scripts/deny.toml. Prints what was checked and what could not be.
#
#   scripts/audit.sh
#
# Always (no network needed beyond crates.io):
#   bans      duplicate versions of a crate (warned, not an error)
#   licenses  every crate's license is in the allow list
#   sources   every crate comes from crates.io: no other registry, no git
#   yanked    no locked version is yanked on crates.io (cargo's index cache, refreshed first
#             from crates.io when it is reachable)
# Only with a copy of the RustSec advisory database (github.com/rustsec/advisory-db):
#   advisories  known vulnerabilities, unmaintained and unsound crates
#
# The database is a git repository on GitHub, which this project's machines cannot reach and
# no package registry ships. Give a clone with ADVISORY_DB=/path/to/advisory-db (made
# wherever GitHub is reachable; any age, its date is printed). Without it the script tries
# GitHub (AUDIT_FETCH_TIMEOUT seconds, default 20), and when that fails says the advisories
# were NOT checked; AUDIT_REQUIRE_ADVISORIES=1 makes that an error.
#
# Exit status: non-zero when a check that ran found an error, or the tools failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! cargo deny --version >/dev/null 2>&1; then
    echo "== installing cargo-deny from crates.io"
    nice -n 10 cargo install --locked cargo-deny
fi
echo "== $(cargo deny --version)"

manifests=(Cargo.toml core/fuzz/Cargo.toml)
config="$root/scripts/deny.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
deny() { cargo deny --manifest-path "$1" --config "$2" --locked --workspace "${@:3}"; }

# A config whose advisory database lives in `$2` (cargo-deny keeps each database under its
# db-path in a folder named after the URL; the name is read from cargo-deny itself).
config_with_db() {
    local db=$1 dir=$2 name
    mkdir -p "$dir"
    sed "s|^db-urls = .*|&\ndb-path = \"$dir\"|" "$config" >"$dir.toml"
    name=$(cargo deny --manifest-path Cargo.toml --config "$dir.toml" --offline --locked \
        check advisories 2>&1 | grep -o "$dir/advisory-db-[0-9a-f]*" | head -1 || true)
    [ -n "$name" ] || { echo "audit.sh: cannot tell where cargo-deny wants its database" >&2; return 1; }
    ln -sfn "$db" "$name"
}

# 1. Refresh the crates.io index entries of every locked crate (for the yanked check).
index=refreshed
for m in "${manifests[@]}"; do
    deny "$m" "$config" fetch index >/dev/null 2>&1 || index="NOT refreshed (cargo's cache used)"
done

# 2. bans, licenses, sources: no network.
for m in "${manifests[@]}"; do
    echo "== $m: bans licenses sources"
    deny "$m" "$config" --offline check --show-stats bans licenses sources || status=1
done

# 3. advisories: the real database if there is one, else a placeholder that lets cargo-deny
#    still check for yanked versions.
advisories=""
if [ -n "${ADVISORY_DB:-}" ]; then
    if ! git -C "$ADVISORY_DB" rev-parse HEAD >/dev/null 2>&1; then
        echo "audit.sh: ADVISORY_DB=$ADVISORY_DB is not a git clone of rustsec/advisory-db" >&2
        exit 2
    fi
    config_with_db "$(cd "$ADVISORY_DB" && pwd)" "$work/db"
    advisories="checked against ADVISORY_DB ($(git -C "$ADVISORY_DB" log -1 --format='commit %h of %cs'))"
    db_config="$work/db.toml"
    db_flags=(--offline)
else
    # Fetching the database reaches beyond the package registries, which these machines
    # must not do: only when asked (AUDIT_FETCH=1, on a machine allowed to reach it).
    if [ "${AUDIT_FETCH:-0}" = 1 ] && timeout "${AUDIT_FETCH_TIMEOUT:-20}" cargo deny \
        --manifest-path Cargo.toml --config "$config" fetch db >"$work/fetch.log" 2>&1; then
        advisories="checked against the RustSec database fetched now"
        db_config="$config"
        db_flags=()
    else
        echo "== no RustSec advisory database (set ADVISORY_DB to a copy, or AUDIT_FETCH=1 where it can be fetched)"
        placeholder="$work/placeholder"
        mkdir -p "$placeholder/crates/keygate-audit-placeholder"
        cat >"$placeholder/crates/keygate-audit-placeholder/KEYGATE-0000-0001.md" <<'EOF'
```toml
[advisory]
id = "KEYGATE-0000-0001"
package = "keygate-audit-placeholder"
date = "2026-01-01"
url = "https://rustsec.org/"

[versions]
patched = []
```

# Placeholder: no RustSec advisory database was available

scripts/audit.sh writes this stand-in (for a crate that does not exist) so that cargo-deny's
advisories check runs its yanked-version check. It says nothing about vulnerabilities.
EOF
        git -C "$placeholder" init -q
        git -C "$placeholder" add -A
        git -C "$placeholder" -c user.name=audit -c user.email=audit@localhost commit -qm placeholder
        config_with_db "$placeholder" "$work/db"
        advisories="NOT CHECKED: no advisory database (set ADVISORY_DB to a clone of rustsec/advisory-db)"
        db_config="$work/db.toml"
        db_flags=(--offline)
    fi
fi
for m in "${manifests[@]}"; do
    echo "== $m: advisories and yanked versions"
    deny "$m" "$db_config" "${db_flags[@]}" check --show-stats advisories || status=1
done

echo
echo "== audit summary"
echo "   lock files:  ${manifests[*]/Cargo.toml/Cargo.lock}"
echo "   bans, licenses, sources: checked (scripts/deny.toml)"
echo "   yanked versions: checked; crates.io index $index"
echo "   RustSec advisories: $advisories"
if [[ "$advisories" == NOT* ]] && [ "${AUDIT_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    echo "audit.sh: AUDIT_REQUIRE_ADVISORIES=1 and no advisory database" >&2
    status=1
fi
[ "$status" = 0 ] && echo "   result: ok" || echo "   result: FAILED (see above)"
exit "$status"
