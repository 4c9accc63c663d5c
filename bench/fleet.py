#!/usr/bin/env python3
"""A fleet of watching fetchers against one keygatectl: how fast a roll reaches all of them,
and what they cost keygatectl.

One process, asyncio, loopback only: `--watchers` keep-alive connections (10,000 by default)
each hold a watch (`GET /v1/keymap?since=V&store=S&wait=60`, as a fetcher sends it, with the
sync token and If-None-Match) and send the next as soon as an answer is in, as both of
keygate's fetchers do. Measured:

- roll → last watcher holding the delta: for each of `--rolls` rolls at random moments, the
  time from the roll request (through the admin API) until every watcher has read the
  answer naming the new version (p50/p99 over the rolls; the Python client reading 10,000
  answers is part of that time, so it reads of each answer only what a fetcher acts on, the
  status, length and ETag, and runs on uvloop when installed; its own CPU per roll is
  reported beside keygatectl's);
- keygatectl's memory per open watch (its RSS with every watch held, less before any);
- keygatectl's CPU per roll (from the roll until every watch is held again);
- the unchanged-map cost: keygatectl's CPU per 304 for watches ending in 304 (wait=1)
  against 304 polls at the same rate, over the same number of connections; with
  `--ctl-instructions`, its instructions per 304 too (keygatectl under callgrind).

The same again with two keygatectl replicas on PostgreSQL (rolls through one, the watchers
on the other) when KEYGATE_TEST_POSTGRES_URL names a server (`scripts/postgres.sh run`).

  .venv/bin/python bench/fleet.py [--watchers 10000] [--rolls 40] [--json FILE]
  .venv/bin/python bench/fleet.py --only unchanged --ctl OLD --ctl NEW --repeat 2
      (one section; two builds of keygatectl taking turns in one run: before/after)
  .venv/bin/python bench/fleet.py --only unchanged --ctl-instructions
      (keygatectl under callgrind: instructions per 304, which the machine's load does not move)

bench.py runs it with `--fleet` (`make bench`) and writes the tables into BENCHMARKS.md.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench as b  # noqa: E402

# keygatectl holds a watch at most this long (MAX_WAIT); the fleet asks for all of it, so the
# watches end by rolls.
WAIT_S = 60


def raise_open_files():
    """The soft limit on open files raised to the hard one: each watcher is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Fleet:
    """Every watcher's state, and what the measurements wait for."""

    def __init__(self, port, token, store, version, wait_s, interval_s=None):
        self.port = port
        self.token = token
        self.store = store
        self.start_version = version
        self.wait_s = wait_s
        # Poll mode (no wait): each watcher asks again this long after each answer.
        self.interval_s = interval_s
        self.watchers = []
        self.requests = {}  # version → the request's bytes
        self.answers = {}  # status → count
        self.lost = 0
        # The roll under way: watchers still to see a version above `floor`, and when each did.
        self.floor = None
        self.pending = 0
        self.seen_at = []
        self.all_seen = None

    def request(self, version):
        # Every watcher at a version sends the same bytes: made once per version.
        made = self.requests.get(version)
        if made is None:
            wait = f"&wait={self.wait_s}" if self.interval_s is None else ""
            made = (f"GET /v1/keymap?since={version}&store={self.store}{wait} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                    f"Accept: application/x-keygate-map, application/json\r\n"
                    f"If-None-Match: \"{self.store}:{version}\"\r\n\r\n").encode()
            if len(self.requests) > 64:
                self.requests.clear()
            self.requests[version] = made
        return made

    def expect_above(self, floor):
        self.floor = floor
        self.seen_at = []
        self.pending = sum(1 for w in self.watchers if w.version <= floor)
        self.all_seen = asyncio.get_running_loop().create_future()

    def saw(self, watcher, before, now):
        if self.floor is not None and before <= self.floor < watcher.version:
            self.seen_at.append(now)
            self.pending -= 1
            if self.pending == 0 and not self.all_seen.done():
                self.all_seen.set_result(now)


class Watcher(asyncio.Protocol):
    """One fetcher: a keep-alive connection, one watch (or poll) at a time."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.version = fleet.start_version
        self.transport = None
        self.buffer = b""
        self.open = False

    def connection_made(self, transport):
        self.transport = transport
        self.open = True
        self.send()

    def send(self):
        if self.open:
            self.transport.write(self.fleet.request(self.version))

    def connection_lost(self, exc):
        if self.open:
            self.fleet.lost += 1
        self.open = False

    def close(self):
        self.open = False
        if self.transport:
            self.transport.close()

    def data_received(self, data):
        # Only what a fetcher needs from each answer: its status, its length (to find the
        # next), and the version its ETag names. The body is not parsed: a fetcher holding
        # the delta is what is timed, and parsing 10,000 JSON deltas on the client's one core
        # would time this client rather than keygatectl.
        buffer = self.buffer + data if self.buffer else data
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            status = int(buffer[9:12])
            head = buffer[:head_end].lower()
            length = 0 if status == 304 else header_int(head, b"\r\ncontent-length:")
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            buffer = buffer[end:]
            self.answered(status, head)
        self.buffer = buffer

    def answered(self, status, head):
        fleet = self.fleet
        fleet.answers[status] = fleet.answers.get(status, 0) + 1
        if status == 200:
            before = self.version
            self.version = max(self.version, etag_version(head))
            fleet.saw(self, before, time.perf_counter())
        if fleet.interval_s is None:
            self.send()
        else:
            asyncio.get_running_loop().call_later(fleet.interval_s, self.send)


def header_value(head, name):
    """The value of header `name` (`b"\\r\\nname:"`) in a lowercased response head."""
    at = head.find(name)
    if at < 0:
        return b""
    start = at + len(name)
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


def header_int(head, name):
    return int(header_value(head, name) or 0)


def etag_version(head):
    """The version an ETag `"<store>:<version>"` names (0 when none)."""
    tag = header_value(head, b"\r\netag:").strip(b'"')
    return int(tag.rpartition(b":")[2] or 0)


async def open_fleet(fleet, count, batch=256):
    """`count` watchers connected and their first request sent, `batch` connecting at once
    (keygatectl's accept backlog is 1024)."""
    loop = asyncio.get_running_loop()
    for start in range(0, count, batch):
        n = min(batch, count - start)
        made = await asyncio.gather(*(
            loop.create_connection(lambda: Watcher(fleet), "127.0.0.1", fleet.port)
            for _ in range(n)))
        fleet.watchers.extend(protocol for _, protocol in made)


def close_fleet(fleet):
    for w in fleet.watchers:
        w.close()
    fleet.watchers = []


async def settled(pid, quiet=0.5, limit=20.0):
    """Waits until the process used no CPU for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    before = b.cpu_ticks(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = b.cpu_ticks(pid)
        if now == before:
            return
        before = now


def key_map_status(ctl):
    status, hdrs, _, store, version = ctl.key_map("/v1/keymap?since=0", {"if-none-match": "*"})
    assert status == 304, status
    return store, version


async def roll_fleet(args, writer, watched, rng, label):
    """Opens the fleet on `watched`, rolls a key through `writer` `args.rolls` times at
    random moments; per roll: time to the last watcher, and `watched`'s CPU."""
    account = writer.admin("POST", "/v1/accounts", {"name": "fleet"})
    key = next(k for k in account["keys"] if k["type"] == "secret" and k["environment"] == "test")
    # Replicas: the watched one has caught up with the account made through the other.
    _, made = key_map_status(writer)
    while key_map_status(watched)[1] < made:
        await asyncio.sleep(0.01)
    store, version = key_map_status(watched)
    await settled(watched.proc.pid)
    rss_before = b.rss_kib(watched.proc.pid)
    fleet = Fleet(watched.port, watched.sync_token, store, version, WAIT_S)
    b.log(f"{label}: opening {args.watchers:,} watches")
    t0 = time.monotonic()
    await open_fleet(fleet, args.watchers)
    opened_s = time.monotonic() - t0
    await settled(watched.proc.pid)
    rss_held = b.rss_kib(watched.proc.pid)
    out = {"watchers": args.watchers, "open_s": opened_s,
           "rss_before_kib": rss_before, "rss_held_kib": rss_held,
           "kib_per_watch": (rss_held - rss_before) / args.watchers,
           "last_s": [], "median_s": [], "cpu_ms": [], "client_cpu_ms": [], "roll_request_s": []}
    b.log(f"{label}: {args.rolls} rolls, {args.watchers:,} watchers on {label.split()[-1]}")
    loop = asyncio.get_running_loop()
    for _ in range(args.rolls):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        _, floor = key_map_status(watched)
        fleet.expect_above(floor)
        cpu0 = b.cpu_ticks(watched.proc.pid)
        client0 = time.process_time()
        t_roll = time.perf_counter()
        rolled = await loop.run_in_executor(
            None, lambda k=key: writer.admin("POST", f"/v1/keys/{k['key_id']}/roll", {}))
        roll_s = time.perf_counter() - t_roll
        key = rolled["new_key"]
        done = await asyncio.wait_for(fleet.all_seen, timeout=60)
        client_ms = (time.process_time() - client0) * 1000
        await settled(watched.proc.pid, quiet=0.2)
        cpu = (b.cpu_ticks(watched.proc.pid) - cpu0) * 1000 / b.CLK_TCK
        lags = sorted(t - t_roll for t in fleet.seen_at)
        out["last_s"].append(done - t_roll)
        out["median_s"].append(lags[len(lags) // 2])
        out["cpu_ms"].append(cpu)
        out["client_cpu_ms"].append(client_ms)
        out["roll_request_s"].append(roll_s)
    out["lost"] = fleet.lost
    out["answers"] = fleet.answers
    close_fleet(fleet)
    return out


async def unchanged_cost(args, ctl, label, counter=None):
    """keygatectl's CPU per 304: watches that end unchanged (wait=1) against polls answered
    304 at once and repeated a second later, over `args.cost_connections` connections; with
    `counter` (keygatectl under callgrind), its instructions per 304 as well."""
    store, version = key_map_status(ctl)
    out = {"connections": args.cost_connections, "seconds": args.cost_seconds}
    for mode, wait_s, interval_s in (("watch", 1, None), ("poll", None, 1.0)):
        fleet = Fleet(ctl.port, ctl.sync_token, store, version, wait_s, interval_s)
        b.log(f"{label}: unchanged map, {args.cost_connections:,} connections, {mode}")
        await open_fleet(fleet, args.cost_connections)
        await asyncio.sleep(2)  # past the first round of answers
        if counter:
            await counter.start()
        answered0, cpu0 = fleet.answers.get(304, 0), b.cpu_ticks(ctl.proc.pid)
        await asyncio.sleep(args.cost_seconds)
        answered = fleet.answers.get(304, 0) - answered0
        cpu_us = (b.cpu_ticks(ctl.proc.pid) - cpu0) * 1e6 / b.CLK_TCK
        out[mode] = {"answers": answered, "cpu_us_per_304": cpu_us / max(answered, 1),
                     "other": {s: n for s, n in fleet.answers.items() if s != 304},
                     "lost": fleet.lost}
        if counter:
            out[mode]["instructions_per_304"] = await counter.stop(mode) / max(answered, 1)
        close_fleet(fleet)
        await asyncio.sleep(1)
    return out


async def unchanged_instructions(args, workdir):
    """The unchanged-map section again with keygatectl under callgrind, over
    `args.instruction_connections` connections (callgrind runs it some 50 times slower)."""
    counter = Callgrind(workdir)
    ctl = b.Keygatectl(workdir, args.ctl_core, name="fleet-callgrind", wrap=counter.wrap())
    counter.pid = ctl.proc.pid
    cost_args = argparse.Namespace(**vars(args))
    cost_args.cost_connections = args.instruction_connections
    try:
        return await unchanged_cost(cost_args, ctl, "SQLite under callgrind", counter)
    finally:
        ctl.stop()


class Callgrind:
    """keygatectl under callgrind, counting its instructions (every thread, user space)
    between `start` and `stop`: a figure that does not move with the machine's load, as CPU
    time does. The kernel's share is not in it; the syscalls of a watch's 304 and a poll's
    are the same (a read and a write each)."""

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.pid = None

    def wrap(self):
        return ["valgrind", "--tool=callgrind", "--dump-instr=no",
                f"--callgrind-out-file={self.dir}/callgrind.%p.out"]

    async def control(self, *argv):
        proc = await asyncio.create_subprocess_exec(
            "callgrind_control", *argv, str(self.pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() != 0:
            raise RuntimeError(f"callgrind_control {' '.join(argv)} failed")

    async def start(self):
        await self.control("--zero")

    async def stop(self, name):
        await self.control("--dump=" + name)
        # The dump's "summary:" line: the events since the last zeroing.
        for dump in sorted(self.dir.glob(f"callgrind.{self.pid}.out.*"),
                           key=lambda p: p.stat().st_mtime, reverse=True):
            text = dump.read_text(errors="replace")
            if f"desc: Trigger: dump {name}\n" in text:
                for line in text.splitlines():
                    if line.startswith(("totals:", "summary:")):
                        return int(line.split()[1])
        raise RuntimeError(f"no callgrind dump named {name} in {self.dir}")


class Postgres:
    """A database of its own on the server KEYGATE_TEST_POSTGRES_URL names."""

    def __init__(self, server_url):
        server = urllib.parse.urlsplit(server_url)
        self.env = {"PGHOST": server.hostname, "PGPORT": str(server.port or 5432),
                    "PGUSER": server.username or "", "PGPASSWORD": server.password or ""}
        self.name = f"keygate_fleet_{os.getpid()}"
        self.url = f"postgres://{server.username}@{server.hostname}:{server.port}/{self.name}"
        self.psql(f"DROP DATABASE IF EXISTS {self.name}")
        self.psql(f"CREATE DATABASE {self.name}")

    def psql(self, sql):
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
        exe = str(psql[-1]) if psql else "psql"
        subprocess.run([exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql],
                       check=True, capture_output=True, env=dict(os.environ, **self.env), timeout=60)

    def drop(self):
        self.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


async def run(args, workdir):
    limit = raise_open_files()
    if limit < args.watchers + 100:
        sys.exit(f"fleet: {args.watchers:,} watchers need more open files than {limit} "
                 f"(raise the hard limit: ulimit -Hn)")
    # Keep this client off keygatectl's core.
    os.sched_setaffinity(0, {args.client_core})
    rng = random.Random(20)
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    results = {"open_files": limit, "event_loop": loop}
    with open("/proc/loadavg") as f:
        results["load_before"] = " ".join(f.read().split()[:3])
    only = getattr(args, "only", None)
    ctl = b.Keygatectl(workdir, args.ctl_core, name="fleet-sqlite")
    try:
        if only in (None, "fleet"):
            results["sqlite"] = await roll_fleet(args, ctl, ctl, rng, "SQLite, one keygatectl")
        if only in (None, "unchanged"):
            results["unchanged"] = await unchanged_cost(args, ctl, "SQLite")
    finally:
        ctl.stop()
    if only in (None, "unchanged") and args.ctl_instructions:
        results["unchanged_instructions"] = await unchanged_instructions(args, workdir)
    server = os.environ.get("KEYGATE_TEST_POSTGRES_URL")
    if server and not args.no_postgres and only is None:
        pg = Postgres(server)
        a = replica_b = None
        try:
            a = b.Keygatectl(workdir, args.ctl_core, database=pg.url, env=pg.env, name="fleet-pg-a")
            replica_b = b.Keygatectl(workdir, args.ctl_core, database=pg.url, env=pg.env,
                                     name="fleet-pg-b", token=a.token, sync_token=a.sync_token)
            results["postgres"] = await roll_fleet(
                args, a, replica_b, rng, "PostgreSQL, rolls on replica A, watchers on replica B")
        finally:
            for replica in (replica_b, a):
                if replica:
                    replica.stop()
            pg.drop()
    with open("/proc/loadavg") as f:
        results["load_after"] = " ".join(f.read().split()[:3])
    return results


def uvloop_module(wanted=True):
    """uvloop when wanted and installed (tests/requirements.txt), else None."""
    if not wanted:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def run_loop(coro, use_uvloop=True):
    """Runs `coro` on uvloop when it is installed, else asyncio's own loop: uvloop's
    transports take a fraction of asyncio's CPU per answer, so on the client's one core the
    figures time keygatectl more and this client less."""
    uvloop = uvloop_module(use_uvloop)
    return uvloop.run(coro) if uvloop else asyncio.run(coro)


def summary(values):
    return " / ".join(f"{b.percentile(values, q) * 1000:.0f} ms" for q in (50, 99))


def tables(r):
    """Markdown rows (measure, value) of a run's results."""
    rows = []
    for key, label in (("sqlite", "one keygatectl on SQLite"),
                       ("postgres", "two replicas on PostgreSQL: rolls through A, watchers on B")):
        s = r.get(key)
        if not s:
            continue
        rows += [
            [f"**{label}**: {s['watchers']:,} watchers, {len(s['last_s'])} rolls at random moments", ""],
            ["roll → the last watcher holding the delta: p50 / p99", summary(s["last_s"])],
            ["  goal: p99 ≤ 1 s", "met" if b.percentile(s["last_s"], 99) <= 1.0 else "**not met**"],
            ["roll → the median watcher holding it: p50 / p99", summary(s["median_s"])],
            ["the roll request itself (until the admin API answered): p50 / p99",
             summary(s.get("roll_request_s") or [0])],
            ["keygatectl memory per open watch (RSS held, less before)",
             f"{s['kib_per_watch']:.1f} KiB ({s['rss_before_kib'] / 1024:.0f} → "
             f"{s['rss_held_kib'] / 1024:.0f} MiB)"],
            ["keygatectl CPU per roll (answering every watcher, and its next watch): p50 / p99",
             " / ".join(f"{b.percentile(s['cpu_ms'], q):.0f} ms" for q in (50, 99))],
            ["this client's CPU per roll (until the last watcher read it): p50 / p99",
             " / ".join(f"{b.percentile(s['client_cpu_ms'], q):.0f} ms" for q in (50, 99))],
            ["connections lost / answers other than 200 and 304",
             f"{s['lost']} / {sum(n for st, n in s['answers'].items() if st not in (200, 304))}"],
        ]
    u = r.get("unchanged")
    if u:
        w, p = u["watch"], u["poll"]
        rows += [
            [f"**unchanged map**, {u['connections']:,} connections, {u['seconds']} s each", ""],
            ["keygatectl CPU per 304: a watch ending in 304 (wait=1) / a 304 poll (every 1 s)",
             f"{w['cpu_us_per_304']:.1f} µs / {p['cpu_us_per_304']:.1f} µs "
             f"({w['answers']:,} / {p['answers']:,} answers)"],
        ]
        rows.append(["  a watch's 304 ÷ a poll's 304 in CPU time",
                     f"{w['cpu_us_per_304'] / max(p['cpu_us_per_304'], 1e-9):.2f}×"])
    i = r.get("unchanged_instructions")
    if i:
        w, p = i["watch"], i["poll"]
        rows.append([f"keygatectl instructions per 304 (callgrind, {i['connections']:,} "
                     "connections): a watch ending in 304 / a 304 poll",
                     f"{w['instructions_per_304']:,.0f} / {p['instructions_per_304']:,.0f} "
                     f"({w['instructions_per_304'] / max(p['instructions_per_304'], 1):.2f}×; "
                     f"{w['answers']:,} / {p['answers']:,} answers)"])
    rows.append(["the client's event loop", r.get("event_loop", "asyncio")])
    rows.append(["load average before / after (2 shared cores)",
                 f"{r['load_before']} / {r['load_after']}"])
    return b.table(["measure", "value"], rows)


def add_arguments(p):
    p.add_argument("--watchers", type=int, default=10_000)
    p.add_argument("--rolls", type=int, default=40)
    p.add_argument("--cost-connections", type=int, default=2_000)
    p.add_argument("--cost-seconds", type=int, default=10)
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL replicas")
    p.add_argument("--ctl-instructions", action="store_true",
                   help="the unchanged-map section again with keygatectl under callgrind: its "
                        "instructions per 304, which the machine's load does not move")
    p.add_argument("--instruction-connections", type=int, default=300)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--ctl-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", choices=("fleet", "unchanged"),
                   help="one SQLite section only: the rolls, or the unchanged-map cost")
    p.add_argument("--ctl", type=Path, action="append",
                   help="the keygatectl binary (default: target/release/keygatectl); given "
                        "more than once, each is measured in turn in this run (before/after)")
    p.add_argument("--asyncio", action="store_true",
                   help="asyncio's own event loop even when uvloop is installed")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per binary, the binaries taking turns")
    args = p.parse_args()
    binaries = args.ctl or [b.CTL]
    runs = []
    for i in range(args.repeat):
        for ctl in binaries:
            b.CTL = ctl
            workdir = Path(tempfile.mkdtemp(prefix="keygate-fleet-"))
            results = run_loop(run(args, workdir), not args.asyncio)
            results["ctl"] = str(ctl)
            runs.append(results)
            if len(binaries) > 1 or args.repeat > 1:
                print(f"### {ctl} (run {i + 1})")
            print(tables(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=1))


if __name__ == "__main__":
    main()
