# shellcheck shell=bash
# A private Docker engine for scripts/compose-test.sh and scripts/oci-test.sh (sourced, not
# run). It has its own data root, exec root, pidfile and socket under KG_STATE, no bridge
# network and no iptables rules (every container uses the host's network), and the tests
# stop it and delete KG_STATE when they finish, pass or fail. Needs root.
#
# The caller sets KG_NAME (a label for progress lines) and KG_STATE (an absolute, short path:
# the sockets under it must stay below 108 characters) before calling these functions.

# The CLI of Debian's docker.io package, which matches its engine and has BuildKit built in
# (a newer docker elsewhere on PATH may insist on the buildx plugin). docker-compose finds it
# through the PATH set in kg_dockerd_start.
docker() { /usr/bin/docker "$@"; }

# shellcheck disable=SC2034 # used by the scripts that source this
kg_t0=$(date +%s)
kg_passed=0

kg_log() { printf '%s [%3ss] %s\n' "$KG_NAME:" "$(( $(date +%s) - kg_t0 ))" "$*"; }
kg_step() { printf '\n%s ==> %s\n' "$KG_NAME:" "$*"; }
kg_ok() { kg_passed=$((kg_passed + 1)); kg_log "ok: $*"; }
kg_die() { printf '%s FAILED: %s\n' "$KG_NAME:" "$*" >&2; exit 1; }

# kg_require_docker engine|compose: installs Debian's docker.io (and docker-compose) if missing.
# One run at a time per state directory: the lock is the calling script's own file, held on
# fd 9 until exit.
kg_lock() {
    exec 9<"$1"
    if ! flock -n 9; then
        kg_log "another $KG_NAME is running (or a killed one's last step): waiting for it"
        flock -w 300 9 || kg_die "still locked after 300 s"
    fi
}

kg_require_docker() {
    local pkgs=(docker.io) missing=0
    [ "${1:-}" = compose ] && pkgs+=(docker-compose)
    [ "$(id -u)" = 0 ] || kg_die "needs root: it starts its own dockerd"
    command -v dockerd >/dev/null && [ -x /usr/bin/docker ] || missing=1
    if [ "${1:-}" = compose ] && ! command -v docker-compose >/dev/null; then missing=1; fi
    if [ "$missing" = 1 ]; then
        command -v apt-get >/dev/null || kg_die "dockerd/docker-compose missing and no apt-get to install ${pkgs[*]}"
        kg_log "installing ${pkgs[*]} (Debian packages)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
            || kg_die "apt-get install ${pkgs[*]} failed"
    fi
}

# True when the pid is a process of this engine: dockerd, its containerd or a containerd shim,
# started with a path under KG_STATE on its command line. (Read without spawning a process
# whose own command line would hold that path.)
kg_pid_is_ours() {
    local pid=$1 comm cmd
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    case "$comm" in dockerd|containerd|containerd-shim*|docker-proxy|runc) ;; *) return 1 ;; esac
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$KG_STATE/"* ]]
}

# Stops the engine (if it runs) and anything an earlier, killed run may have left: processes
# of its containers (found by container id in the cgroup tree), containerd and its shims;
# unmounts what is still mounted below KG_STATE and deletes KG_STATE. Idempotent.
kg_dockerd_stop() {
    local pid p id procs
    pid=$(cat "$KG_STATE/dockerd.pid" 2>/dev/null || true)
    if kg_pid_is_ours "$pid"; then
        # dockerd stops its containers on the way down.
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kg_pid_is_ours "$pid" || break; sleep 0.1; done
        if kg_pid_is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
    fi
    if [ -d "$KG_STATE/data/containers" ]; then
        for id in "$KG_STATE"/data/containers/*; do
            id=${id##*/}
            [ ${#id} = 64 ] || continue
            find /sys/fs/cgroup -maxdepth 4 -type d -name "*$id*" 2>/dev/null | while read -r procs; do
                [ -r "$procs/cgroup.procs" ] || continue
                while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$procs/cgroup.procs"
            done
        done
    fi
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if kg_pid_is_ours "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    if [ -d "$KG_STATE" ]; then
        # Deepest first: container rootfs and shm mounts, then the data root's own.
        awk -v s="$KG_STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r \
            | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$KG_STATE"
    fi
    [ ! -e "$KG_STATE" ] || kg_die "could not remove $KG_STATE"
}

kg_dockerd_start() {
    if [ -e "$KG_STATE" ]; then
        kg_log "cleaning up what an earlier run left in $KG_STATE"
        kg_dockerd_stop
    fi
    mkdir -p "$KG_STATE/bin" "$KG_STATE/docker-config"
    ln -s /usr/bin/docker "$KG_STATE/bin/docker"
    export PATH="$KG_STATE/bin:$PATH"
    export DOCKER_HOST="unix://$KG_STATE/docker.sock"
    export DOCKER_CONFIG="$KG_STATE/docker-config"
    export DOCKER_BUILDKIT=1
    unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
    # (fd 9, the caller's run lock, is not passed on: a dockerd that outlived a killed run must
    # not keep the next run out.)
    kg_log "starting dockerd (data, exec root and socket under $KG_STATE)"
    setsid dockerd \
        --bridge=none --iptables=false --ip-masq=false \
        --data-root "$KG_STATE/data" --exec-root "$KG_STATE/exec" \
        --pidfile "$KG_STATE/dockerd.pid" -H "$DOCKER_HOST" \
        >"$KG_STATE/dockerd.log" 2>&1 </dev/null 9<&- &
    for _ in $(seq 1 300); do
        docker version >/dev/null 2>&1 && break
        if ! kill -0 $! 2>/dev/null; then
            tail -n 20 "$KG_STATE/dockerd.log" >&2
            kg_die "dockerd exited"
        fi
        sleep 0.1
    done
    docker version >/dev/null 2>&1 || { tail -n 20 "$KG_STATE/dockerd.log" >&2; kg_die "dockerd not up after 30 s"; }
    kg_log "dockerd $(docker version --format '{{.Server.Version}}') is up"
}

# Removes every container, volume, image and build cache of the private engine, then checks
# that nothing is left but the networks dockerd makes itself (host, none).
# shellcheck disable=SC2086 # ids: one word each
kg_docker_purge() {
    local ids
    ids=$(docker ps -aq); [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
    ids=$(docker volume ls -q); [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
    ids=$(docker images -aq); [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1 || true
    docker builder prune -af >/dev/null 2>&1 || true
}

kg_docker_verify_clean() {
    local left
    left=$(docker ps -aq; docker volume ls -q; docker images -aq;
           docker network ls --format '{{.Name}}' | grep -vxE 'bridge|host|none' || true)
    if [ -n "$left" ]; then
        docker ps -a; docker volume ls; docker images -a; docker network ls
        kg_die "the engine still holds containers, volumes, images or networks"
    fi
    kg_ok "no container, volume, image or network of ours left ($(docker network ls --format '{{.Name}}' | tr '\n' ' '))"
}
