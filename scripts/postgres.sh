#!/usr/bin/env bash
# A throwaway PostgreSQL for keygate's tests: a temporary data directory, a free port on
# 127.0.0.1 only, a generated password, durability off (fsync, synchronous_commit), and
# nothing left behind. TLS is on beside plain connections: a CA made for the run signs the
# server's certificate (valid for the name `localhost` only, not for 127.0.0.1, so that the
# host-name check can be seen to refuse) and a client certificate for the role
# `keygate_cert`, which may sign in only with it (pg_hba `cert`). A second CA, which signed
# nothing, is there to be refused. Their files are in $KEYGATE_TEST_POSTGRES_TLS:
# ca.crt, other-ca.crt, client.crt, client.key.
#
#   scripts/postgres.sh run CMD [ARG…]  start one, run CMD with KEYGATE_TEST_POSTGRES_URL and
#                                       KEYGATE_TEST_POSTGRES_TLS set,
#                                       then stop it and remove its directory, whatever CMD
#                                       did (CMD's exit status is kept). When
#                                       KEYGATE_TEST_POSTGRES_URL is already set, just runs CMD.
#   scripts/postgres.sh start DIR       start one in DIR (new or empty); prints its URL
#                                       (also in DIR/url; the TLS files in DIR/tls)
#   scripts/postgres.sh stop DIR        stop the one in DIR and remove DIR
#   scripts/postgres.sh fails-without-server CMD [ARG…]
#                                       run CMD with no server but KEYGATE_REQUIRE_POSTGRES=1
#                                       and succeed only if it fails saying so: the check
#                                       that a PostgreSQL suite cannot pass by skipping
#
# Binaries: PG_BIN=/path/to/bin, else the newest /usr/lib/postgresql/*/bin (Debian's
# `postgresql` package, installed here when missing and run as root). As root, the server
# runs as the `postgres` user (initdb and postgres refuse root); otherwise as the current
# user.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -z "$dir" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        # A fresh machine: install Debian's server (its own cluster is not used).
        echo "postgres.sh: installing PostgreSQL (apt-get install -y postgresql)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
        dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
    [[ -n "$dir" && -x "$dir/initdb" ]] \
        || die "no PostgreSQL binaries: apt-get install -y postgresql, or set PG_BIN"
    echo "$dir"
}

# Runs a command as the server's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# make_tls DIR: the run's CA, the server's and the client's certificates, and a CA that
# signed nothing (openssl; EC P-256 keys, valid for a day).
make_tls() {
    local dir=$1
    command -v openssl >/dev/null || die "openssl is missing: apt-get install -y openssl"
    mkdir -p "$dir"
    (
        cd "$dir"
        umask 077
        for ca in ca other-ca; do
            openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                -keyout "$ca.key" -out "$ca.crt" -days 1 -subj "/CN=keygate test $ca" \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
                2>/dev/null
        done
        sign() {  # sign NAME CN EXTENSIONS
            openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
            printf '%s\n' "$3" > "$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out "$1.crt" -days 1 -extfile "$1.ext" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        sign server localhost "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
        sign client keygate_cert "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
        rm -f ca.key other-ca.key ca.srl
        chmod 644 ca.crt other-ca.crt client.crt server.crt
    ) || die "could not make the TLS certificates"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 bin password port url attempt
    bin=$(pg_bin)
    mkdir -p "$dir"
    [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty"
    chmod 700 "$dir"
    mkdir "$dir/sock"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user"
        chown -R postgres: "$dir"
    fi
    password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    (umask 077; printf '%s\n' "$password" > "$dir/pwfile")
    [[ $(id -u) -ne 0 ]] || chown postgres: "$dir/pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -U keygate --pwfile="$dir/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    make_tls "$dir/tls"
    chmod 755 "$dir/tls"
    # The server's key is the server's alone; the client's stays with the tests.
    [[ $(id -u) -ne 0 ]] || chown postgres: "$dir/tls/server.key" "$dir/tls/server.crt"
    # The client-certificate role signs in with its certificate only; everyone else as before.
    sed -i '1i hostssl all keygate_cert 127.0.0.1/32 cert' "$dir/data/pg_hba.conf"
    # Another process may take the free port between the probe and the bind: try again.
    for attempt in 1 2 3; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/sock \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=300 -c shared_buffers=32MB \
                -c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key \
                -c ssl_ca_file=$dir/tls/ca.crt" \
            start >/dev/null; then
            url="postgres://keygate:$password@127.0.0.1:$port/postgres"
            "$bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$url" -c "CREATE ROLE keygate_cert LOGIN" >/dev/null \
                || die "could not create the role keygate_cert"
            (umask 077; printf '%s\n' "$url" > "$dir/url")
            echo "$url"
            return 0
        fi
    done
    cat "$dir/postgres.log" >&2 || true
    die "PostgreSQL did not start"
}

stop() {
    local dir=$1 bin
    bin=$(pg_bin)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null \
            || echo "postgres.sh: could not stop the server in $dir" >&2
    fi
    rm -rf "$dir"
}

run() {
    [[ $# -gt 0 ]] || die "usage: postgres.sh run CMD [ARG…]"
    if [[ -n "${KEYGATE_TEST_POSTGRES_URL:-}" ]]; then
        exec "$@"
    fi
    local url status=0
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/keygate-pg.XXXXXX")
    trap 'stop "$RUN_DIR"' EXIT
    trap 'exit 130' INT TERM
    url=$(start "$RUN_DIR")
    echo "postgres.sh: PostgreSQL $("$(pg_bin)/postgres" --version | awk '{print $3}') on ${url##*@}" >&2
    KEYGATE_TEST_POSTGRES_URL=$url KEYGATE_TEST_POSTGRES_TLS=$RUN_DIR/tls "$@" || status=$?
    return "$status"
}

# The suites that need PostgreSQL must fail, not skip, when `make test` requires it and it
# is missing (a broken `run` would otherwise leave them out and still pass).
fails_without_server() {
    [[ $# -gt 0 ]] || die "usage: postgres.sh fails-without-server CMD [ARG…]"
    local out status=0
    out=$(env -u KEYGATE_TEST_POSTGRES_URL -u KEYGATE_TEST_POSTGRES_TLS KEYGATE_REQUIRE_POSTGRES=1 "$@" 2>&1) || status=$?
    if [[ $status -eq 0 ]]; then
        printf '%s\n' "$out" | tail -n 20 >&2
        die "'$*' passed without a PostgreSQL although KEYGATE_REQUIRE_POSTGRES=1"
    fi
    if ! grep -q "KEYGATE_REQUIRE_POSTGRES=1 but KEYGATE_TEST_POSTGRES_URL is unset" <<<"$out"; then
        printf '%s\n' "$out" | tail -n 40 >&2
        die "'$*' failed, but not for the missing PostgreSQL"
    fi
    echo "postgres.sh: '$*' fails without a PostgreSQL when one is required (as it must)" >&2
}

case "${1:-}" in
    run) shift; run "$@" ;;
    fails-without-server) shift; fails_without_server "$@" ;;
    start) [[ $# -eq 2 ]] || die "usage: postgres.sh start DIR"; start "$2" ;;
    stop) [[ $# -eq 2 ]] || die "usage: postgres.sh stop DIR"; stop "$2" ;;
    *) die "usage: postgres.sh run CMD… | start DIR | stop DIR | fails-without-server CMD…" ;;
esac
