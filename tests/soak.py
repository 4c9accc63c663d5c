"""`make soak`: sustained mixed traffic through Envoy (2 workers) syncing from keygatectl,
while keys roll every few seconds and keygatectl restarts every 30 s. The wasm filter by
default, the native module with KEYGATE_FRONTEND=native.

Always ends within its duration + 60 s (a watchdog prints the totals so far and exits if
anything hangs), prints its totals (requests, rolls, restarts, wrong decisions, 5xx,
transport errors by kind, RSS before and after), and exits non-zero on any wrong decision,
5xx, transport error or leaked key.

    .venv/bin/python tests/soak.py --seconds 120
"""

import argparse
import collections
import json
import math
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import keys as keylib  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from ctl import Keygatectl  # noqa: E402
from test_lifecycle import INTERVAL_MS  # noqa: E402

# A rolled key's old and new values may each be judged either way for this long after the
# roll, or after keygatectl is back when it restarted meanwhile (the poll interval, plus
# keygatectl's own refresh, plus margin).
SETTLE_SECONDS = 2.0
# The fetchers' longest delay between retries (MAX_BACKOFF_MS in sync-core/src/poller.rs).
MAX_RETRY_SECONDS = 10.0
RESTART_EVERY = 30.0
# keygatectl stays down this long at each restart.
DOWNTIME = 1.0
# The watchdog's margin beyond the duration: the soak ends by then whatever hangs.
WATCHDOG_MARGIN = 55.0

# The soak's access log: the shipped fields plus what explains a failed connection.
ACCESS_LOG_EXTRA = {
    "flags": "%RESPONSE_FLAGS%",
    "connection": "%CONNECTION_ID%",
    "peer_port": "%DOWNSTREAM_REMOTE_PORT%",
    "termination": "%CONNECTION_TERMINATION_DETAILS%",
    "duration_ms": "%DURATION%",
}
# Envoy's counters for the listener's connections and streams (http.api.*), read at the end.
CONNECTION_STATS = (
    "downstream_cx_total", "downstream_cx_destroy_local", "downstream_cx_destroy_remote",
    "downstream_cx_destroy_local_active_rq", "downstream_cx_destroy_remote_active_rq",
    "downstream_cx_idle_timeout", "downstream_cx_drain_close", "downstream_cx_protocol_error",
    "downstream_cx_max_duration_reached", "downstream_cx_overload_disable_keepalive",
    "downstream_rq_rx_reset", "downstream_rq_tx_reset", "downstream_rq_5xx",
)


def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_envoy(up, ctl):
    """Envoy from envoy-sync.yaml (the native module in its place with
    KEYGATE_FRONTEND=native), polling keygatectl every INTERVAL_MS, with a richer access log."""
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: up.server_address[1], 8080: ctl.port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": INTERVAL_MS, "timeout_ms": 500,
                    "bearer_token": ctl.sync_token})
    harness.set_service_config(config, service)
    for d in harness.walk(config):
        if "json_format" in d:
            d["json_format"].update(ACCESS_LOG_EXTRA)
    envoy = harness.Envoy(config, concurrency=2, log_flush_ms=1000)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


def client_port(response):
    """The local port of the connection that carried `response`."""
    stream = response.extensions.get("network_stream")
    address = stream.get_extra_info("client_addr") if stream else None
    return address[1] if address else None


class Soak:
    def __init__(self, seconds, threads, restart_every=RESTART_EVERY):
        self.seconds = seconds
        self.threads = threads
        self.restart_every = restart_every
        self.lock = threading.Lock()
        self.totals = collections.Counter()
        self.errors = collections.Counter()  # transport errors by kind
        self.error_examples = []
        self.wrong_examples = []
        self.problems = []  # leaks, failed restarts, crashed threads: each fails the soak
        # The churned keys, oldest first: {"key", "from", "until"}, each time a (begun, done)
        # pair around the roll that made or retired the key (None: open-ended). A roll takes
        # effect between the call's start and SETTLE_SECONDS after its answer. A key's
        # "until" is (begun, None) while its roll is under way: the watch can bring the
        # change to Envoy before the roll's answer reaches the roller.
        self.churn = []
        # (keygatectl stopped at, back at or None while down): see `settled`.
        self.restarts = []
        # Held by the roller for a roll and by the main thread for a restart: no roll
        # while keygatectl is down.
        self.ctl_lock = threading.Lock()
        self.stop = threading.Event()
        self.started = None
        self.envoy = None
        self.ctl = None
        self.rss_start = (0, 0)

    # -- the decision expected for a churned key --------------------------------------

    def settled(self, when):
        """When a change made at `when` is known to be on every worker: SETTLE_SECONDS
        after it, or after keygatectl came back if it went down meanwhile."""
        at = when
        with self.lock:
            restarts = list(self.restarts)
        for down, back in restarts:
            if down <= at + SETTLE_SECONDS and (back is None or back >= when):
                if back is None:
                    return math.inf
                # The fetchers retry a lost keygatectl with a delay doubling from the
                # interval (capped at MAX_RETRY_SECONDS): the retry after it is back comes
                # at most as long after as it was gone, plus one interval.
                retry_gap = min(back - down + INTERVAL_MS / 1000, MAX_RETRY_SECONDS)
                at = max(at, back + retry_gap)
        return at + SETTLE_SECONDS

    def expected(self, info, now):
        """The answers a churned key may get at `now`, from what the roller has recorded."""
        with self.lock:
            valid_from, valid_until = info["from"], info["until"]
        ok_from = valid_from is None or now >= self.settled(valid_from[1])
        maybe_from = valid_from is None or now >= valid_from[0]
        refused_after = (valid_until is not None and valid_until[1] is not None
                         and now >= self.settled(valid_until[1]))
        maybe_refused = valid_until is not None and now >= valid_until[0]
        if refused_after or not maybe_from:
            return {401}
        if ok_from and not maybe_refused:
            return {200}
        return {200, 401}

    def describe(self, info):
        """A churned key's timeline (seconds into the soak), for a wrong decision's report."""
        with self.lock:
            spans = {k: info[k] for k in ("from", "until")}
        def span(v):
            done = f"{v[1] - self.started:.3f}" if v[1] is not None else "(under way)"
            return f"{v[0] - self.started:.3f}–{done} s"
        return ", ".join(f"{k} {span(v)}" if v else f"{k} —" for k, v in spans.items())

    # -- recording --------------------------------------------------------------------

    def record(self, response, allowed, what, sent, info=None):
        status = response.status_code
        wrong = status not in allowed
        if wrong:
            try:
                code = response.json().get("error", {}).get("code")
            except ValueError:
                code = None
            example = (f"sent {sent - self.started:.3f} s, answered "
                       f"{time.monotonic() - self.started:.3f} s, {what}: got {status} {code}, "
                       f"expected {sorted(allowed)}"
                       + (f" (key {self.describe(info)})" if info is not None else ""))
        with self.lock:
            self.totals["requests"] += 1
            if status >= 500:
                self.totals["5xx"] += 1
            # A churned key refused before its roll's answer reached the roller: the watch
            # outran the roll's own answer (counted to show it, never wrong).
            if status == 401 and info is not None and info["until"] and info["until"][1] is None:
                self.totals["refused_mid_roll"] += 1
            if wrong:
                self.totals["wrong"] += 1
                if len(self.wrong_examples) < 10:
                    self.wrong_examples.append(example)

    def transport_error(self, error, what, port, reused, idle):
        kind = f"{type(error).__name__}: {error}"[:120]
        with self.lock:
            self.totals["requests"] += 1
            self.errors[kind] += 1
            if len(self.error_examples) < 20:
                self.error_examples.append({
                    "at": round(time.monotonic() - self.started, 3), "kind": kind,
                    "what": what, "port": port, "reused": reused,
                    "idle_ms": round(idle * 1000) if idle is not None else None})

    def problem(self, text):
        with self.lock:
            self.problems.append(text)

    # -- the threads ------------------------------------------------------------------

    def traffic(self, url, steady, publishable):
        """Requests on one keep-alive connection (a new one after an error), until stopped.
        Nothing a request does ends this loop but `stop`."""
        rng = random.Random()
        client = httpx.Client(base_url=url, timeout=5)
        port, last_done = None, None
        try:
            while not self.stop.is_set():
                kind = rng.random()
                info = None
                if kind < 0.4:
                    key, allowed, what = steady, {200}, "valid"
                elif kind < 0.55:
                    key, allowed, what = keylib.make_key(), {401}, "unknown key"
                elif kind < 0.7:
                    key, allowed, what = publishable, {403}, "forbidden"
                else:
                    with self.lock:
                        if self.churn:
                            info = rng.choice(self.churn[-6:])
                    if info is None:
                        continue
                    key, what = info["key"], "rolled/new key"
                sent = time.monotonic()
                try:
                    r = client.get("/v3/devices", headers={"authorization": f"token {key}"})
                except Exception as e:  # noqa: BLE001 — counted and reported, never fatal
                    idle = sent - last_done if last_done is not None else None
                    self.transport_error(e, what, port, port is not None, idle)
                    port, last_done = None, None
                    self.stop.wait(0.01)  # a dead Envoy: retry, without a storm
                    continue
                if info is not None:
                    # The answer may reflect any moment between sending and receiving, and
                    # `info` now holds any roll made meanwhile.
                    allowed = self.expected(info, sent) | self.expected(info, time.monotonic())
                self.record(r, allowed, what, sent, info)
                port, last_done = client_port(r), time.monotonic()
        except Exception:  # noqa: BLE001 — a bug in this loop: reported, fails the soak
            self.problem("traffic thread: " + traceback.format_exc(limit=3))
        finally:
            client.close()

    def roller(self, churn_key):
        try:
            while not self.stop.wait(2.0):
                with self.ctl_lock:
                    begun = time.monotonic()
                    # Recorded before the call: Envoy may refuse the old key before the
                    # roll's answer is back here.
                    with self.lock:
                        self.churn[-1]["until"] = (begun, None)
                    try:
                        rolled = self.ctl.api("POST", f"/v1/keys/{churn_key['key_id']}/roll", {})
                    except (AssertionError, OSError) as e:
                        # Made or not, the roll's fate is unknown: stop churning this key.
                        self.problem(f"roll refused with keygatectl up: {e}"[:200])
                        return
                    done = time.monotonic()
                with self.lock:
                    self.churn[-1]["until"] = (begun, done)
                    self.churn.append({"key": rolled["new_key"]["key"], "from": (begun, done),
                                       "until": None})
                    self.totals["rolls"] += 1
                churn_key = rolled["new_key"]
        except Exception:  # noqa: BLE001
            self.problem("roller: " + traceback.format_exc(limit=3))

    def restart_keygatectl(self):
        with self.ctl_lock:
            with self.lock:
                self.restarts.append((time.monotonic(), None))
            try:
                self.ctl.stop()  # also scans its log and database for plaintext keys
            except AssertionError as e:
                self.problem(f"keygatectl: {e}")
            time.sleep(DOWNTIME)
            for attempt in range(5):
                try:
                    self.ctl.start(port=self.ctl.port)
                    break
                except (RuntimeError, TimeoutError) as e:
                    if attempt == 4:
                        self.problem(f"keygatectl did not come back: {str(e)[:300]}")
            with self.lock:
                self.restarts[-1] = (self.restarts[-1][0], time.monotonic())
                self.totals["restarts"] += 1

    def watchdog(self, limit):
        """Ends the process at `limit` (monotonic) if the soak has not: totals so far,
        then every process it started is killed and the exit status says why."""
        while time.monotonic() < limit:
            if self.stop.wait(1.0) and self.finished.wait(max(0.0, limit - time.monotonic())):
                return
        print(f"soak: WATCHDOG: not finished {WATCHDOG_MARGIN:.0f} s after its duration; "
              "stopping everything", flush=True)
        self.problem("watchdog fired: the soak hung")
        try:
            self.report(time.monotonic() - self.started, (0, 0))
        finally:
            harness.stop_every_process()
            os._exit(3)

    # -- the run ----------------------------------------------------------------------

    def run(self):
        self.finished = threading.Event()
        self.started = time.monotonic()
        threading.Thread(target=self.watchdog, daemon=True,
                         args=(self.started + self.seconds + WATCHDOG_MARGIN,)).start()
        up = upstream_mod.start()
        self.ctl = Keygatectl().start()
        self.envoy = start_envoy(up, self.ctl)
        workers = []
        rss_end = (0, 0)
        try:
            _, account_keys = self.ctl.create_account()
            steady = account_keys["sk_test"]["key"]
            publishable = account_keys["pk_test"]["key"]
            churn_key = account_keys["sk_production"]
            self.churn.append({"key": churn_key["key"], "from": None, "until": None})
            deadline = time.monotonic() + 10
            while httpx.get(self.envoy.url + "/v3/devices",
                            headers={"authorization": f"token {steady}"}).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the stack did not come up")
                time.sleep(0.05)
            self.rss_start = (rss_kb(self.envoy.proc.pid), rss_kb(self.ctl.proc.pid))
            workers = [threading.Thread(target=self.traffic, daemon=True,
                                        args=(self.envoy.url, steady, publishable))
                       for _ in range(self.threads)]
            workers.append(threading.Thread(target=self.roller, args=(churn_key,), daemon=True))
            self.started = time.monotonic()
            for w in workers:
                w.start()
            end = self.started + self.seconds
            next_restart = self.started + self.restart_every
            while not self.stop.wait(min(0.5, max(0.0, end - time.monotonic()))):
                now = time.monotonic()
                if now >= end:
                    break
                # No restart in the last seconds: its rolls could not settle before the end.
                if now >= next_restart and now + DOWNTIME + 2 * SETTLE_SECONDS < end:
                    self.restart_keygatectl()
                    next_restart += self.restart_every
            rss_end = (rss_kb(self.envoy.proc.pid), rss_kb(self.ctl.proc.pid))
        except Exception:  # noqa: BLE001
            self.problem("soak: " + traceback.format_exc(limit=5))
        finally:
            self.stop.set()
            for w in workers:
                w.join(timeout=10)
                if w.is_alive():
                    self.problem(f"{w.name} did not stop")
            elapsed = time.monotonic() - self.started
            stats = self.envoy_stats()
            for name, stop in (("envoy", self.envoy.stop), ("keygatectl", self.ctl.stop)):
                try:
                    stop()  # each also scans what it wrote for plaintext keys
                except AssertionError as e:
                    self.problem(f"{name}: {e}")
            up.shutdown()
        ok = self.report(elapsed, rss_end, stats)
        self.finished.set()
        return ok

    def envoy_stats(self):
        try:
            counters = self.envoy.counters("http.api.")
            counters.update({"sync." + k: v for k, v in
                             self.envoy.counters(harness.STATS + "keygate.sync.").items()})
            return counters
        except OSError as e:
            return {"unavailable": str(e)}

    def explain_errors(self):
        """For each transport error on a reused connection: the last answer Envoy logged on
        that connection (its flags and termination details), from the access log."""
        if not self.envoy or not self.error_examples:
            return []
        by_port = collections.defaultdict(list)
        for line in self.envoy.read_log().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("peer_port"):
                    by_port[int(entry["peer_port"])].append(entry)
        out = []
        for example in self.error_examples:
            entries = by_port.get(example["port"], []) if example["port"] else []
            last = entries[-1] if entries else None
            out.append((example, len(entries), last and {
                k: last.get(k) for k in ("time", "status", "details", "flags", "connection",
                                         "termination", "duration_ms")}))
        return out

    def report(self, elapsed, rss_end, stats=None):
        # Bounded: the watchdog reports even if a thread died holding the lock.
        locked = self.lock.acquire(timeout=5)
        try:
            t = dict(self.totals)
            errors = dict(self.errors)
            problems = list(self.problems)
        finally:
            if locked:
                self.lock.release()
        requests = t.get("requests", 0)
        print(f"soak ({harness.FRONTEND}): {elapsed:.0f} s, {requests} requests "
              f"({requests / max(elapsed, 1e-9):.0f}/s), {t.get('rolls', 0)} rolls, "
              f"{t.get('restarts', 0)} keygatectl restarts, "
              f"{t.get('refused_mid_roll', 0)} old keys refused before their roll's answer")
        print(f"soak: wrong decisions {t.get('wrong', 0)}, 5xx {t.get('5xx', 0)}, "
              f"transport errors {sum(errors.values())}")
        for kind, n in sorted(errors.items(), key=lambda kv: -kv[1]):
            print(f"  error: {n} × {kind}")
        for example, seen, last in self.explain_errors():
            print(f"  error at {example['at']} s ({example['what']}, "
                  f"{'reused connection, idle ' + str(example['idle_ms']) + ' ms' if example['reused'] else 'new connection'}, "
                  f"port {example['port']}): Envoy logged {seen} requests on it; last: {last}")
        print(f"soak: Envoy RSS {self.rss_start[0] / 1024:.1f} → {rss_end[0] / 1024:.1f} MB, "
              f"keygatectl RSS {self.rss_start[1] / 1024:.1f} → {rss_end[1] / 1024:.1f} MB "
              "(a new process after each restart)")
        if stats:
            shown = {k: stats[k] for k in CONNECTION_STATS if k in stats}
            shown.update({k: v for k, v in stats.items() if k.startswith("sync.")})
            print("soak: Envoy " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        for example in self.wrong_examples:
            print("  wrong:", example)
        for problem in problems:
            print("  PROBLEM:", problem)
        ok = (t.get("wrong", 0) == 0 and t.get("5xx", 0) == 0 and not errors and not problems
              and requests > 0)
        if ok:
            print("soak: no wrong decision, no error; no plaintext key in Envoy's or "
                  "keygatectl's logs, stats or database")
        sys.stdout.flush()
        return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--restart-every", type=float, default=RESTART_EVERY,
                        help="seconds between keygatectl restarts")
    args = parser.parse_args()
    module = harness.NATIVE if harness.NATIVE_MODE else harness.WASM
    if not module.exists():
        sys.exit(f"{module} is missing: run `make build` first")
    sys.exit(0 if Soak(args.seconds, args.threads, args.restart_every).run() else 1)


if __name__ == "__main__":
    main()
