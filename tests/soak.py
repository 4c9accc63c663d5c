"""`make soak`: sustained mixed traffic through Envoy (2 workers) syncing from keygatectl,
while keys roll every few seconds and keygatectl restarts. Bounded in time; prints totals
and exits non-zero on any wrong decision or leaked key.

    .venv/bin/python tests/soak.py --seconds 120
"""

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import keys as keylib  # noqa: E402
import upstream as upstream_mod  # noqa: E402
from ctl import Keygatectl  # noqa: E402
from test_lifecycle import start_envoy  # noqa: E402

# A rolled key's old and new values may each be judged either way for this long after the
# roll (the poll interval, plus keygatectl's and the workers' own refresh, plus margin).
SETTLE_SECONDS = 2.0


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, seconds, threads):
        self.seconds = seconds
        self.threads = threads
        self.lock = threading.Lock()
        self.totals = {"requests": 0, "wrong": 0, "5xx": 0, "rolls": 0, "restarts": 0}
        self.wrong_examples = []
        # (key, valid_from, valid_until): None means open-ended.
        self.churn = []
        self.stop = threading.Event()

    def expected(self, key_info, now):
        _, valid_from, valid_until = key_info
        ok_from = valid_from is None or now >= valid_from + SETTLE_SECONDS
        maybe_from = valid_from is None or now >= valid_from
        refused_after = valid_until is not None and now >= valid_until + SETTLE_SECONDS
        maybe_refused = valid_until is not None and now >= valid_until
        if refused_after or not maybe_from:
            return {401}
        if ok_from and not maybe_refused:
            return {200}
        return {200, 401}

    def record(self, status, allowed, what):
        with self.lock:
            self.totals["requests"] += 1
            if status >= 500:
                self.totals["5xx"] += 1
            if status not in allowed:
                self.totals["wrong"] += 1
                if len(self.wrong_examples) < 10:
                    self.wrong_examples.append(f"{what}: got {status}, expected {sorted(allowed)}")

    def traffic(self, url, steady, publishable):
        rng = random.Random()
        with httpx.Client(base_url=url, timeout=5) as client:
            while not self.stop.is_set():
                kind = rng.random()
                if kind < 0.4:
                    key, path, allowed, what = steady, "/v3/devices", {200}, "valid"
                elif kind < 0.55:
                    key, path, allowed, what = keylib.make_key(), "/v3/devices", {401}, "unknown key"
                elif kind < 0.7:
                    key, path, allowed, what = publishable, "/v3/devices", {403}, "forbidden"
                else:
                    with self.lock:
                        if not self.churn:
                            continue
                        info = rng.choice(self.churn[-6:])
                    sent_at = time.monotonic()
                    key, path, what = info[0], "/v3/devices", "rolled/new key"
                    allowed = self.expected(info, sent_at)
                r = client.get(path, headers={"authorization": f"token {key}"})
                if what == "rolled/new key":
                    # The answer may reflect any moment between sending and receiving.
                    allowed = allowed | self.expected(info, time.monotonic())
                self.record(r.status_code, allowed, what)

    def roller(self, ctl, churn_key):
        while not self.stop.wait(2.0):
            try:
                rolled = ctl.api("POST", f"/v1/keys/{churn_key['key_id']}/roll", {})
            except (AssertionError, OSError):
                continue  # keygatectl is restarting
            now = time.monotonic()
            with self.lock:
                old = self.churn.pop() if self.churn else (churn_key["key"], None, None)
                self.churn.append((old[0], old[1], now))
                self.churn.append((rolled["new_key"]["key"], now, None))
                self.totals["rolls"] += 1
            churn_key = rolled["new_key"]

    def run(self):
        up = upstream_mod.start()
        ctl = Keygatectl().start()
        envoy = start_envoy(up, ctl)
        try:
            _, account_keys = ctl.create_account()
            steady = account_keys["sk_test"]["key"]
            publishable = account_keys["pk_test"]["key"]
            churn_key = account_keys["sk_production"]
            self.churn.append((churn_key["key"], None, None))
            deadline = time.monotonic() + 10
            while httpx.get(envoy.url + "/v3/devices", headers={"authorization": f"token {steady}"}).status_code != 200:
                assert time.monotonic() < deadline, "the stack did not come up"
                time.sleep(0.05)
            time.sleep(1)
            rss_start = (rss_kb(envoy.proc.pid), rss_kb(ctl.proc.pid))
            workers = [threading.Thread(target=self.traffic, args=(envoy.url, steady, publishable))
                       for _ in range(self.threads)]
            workers.append(threading.Thread(target=self.roller, args=(ctl, churn_key)))
            for w in workers:
                w.start()
            started = time.monotonic()
            next_restart = started + 30
            while time.monotonic() - started < self.seconds:
                time.sleep(0.5)
                if time.monotonic() >= next_restart:
                    ctl.stop()
                    time.sleep(1)
                    ctl.start(port=ctl.port)
                    self.totals["restarts"] += 1
                    next_restart += 30
            self.stop.set()
            for w in workers:
                w.join()
            rss_end = (rss_kb(envoy.proc.pid), rss_kb(ctl.proc.pid))
            elapsed = time.monotonic() - started
        finally:
            envoy.stop()
            ctl.stop()
            up.shutdown()
        t = self.totals
        print(f"soak: {elapsed:.0f} s, {t['requests']} requests ({t['requests'] / elapsed:.0f}/s), "
              f"{t['rolls']} rolls, {t['restarts']} keygatectl restarts")
        print(f"soak: wrong decisions {t['wrong']}, 5xx {t['5xx']}")
        print(f"soak: Envoy RSS {rss_start[0] / 1024:.1f} → {rss_end[0] / 1024:.1f} MB, "
              f"keygatectl RSS {rss_start[1] / 1024:.1f} → {rss_end[1] / 1024:.1f} MB")
        print("soak: no plaintext key in Envoy's or keygatectl's logs, stats or database")
        for example in self.wrong_examples:
            print("  wrong:", example)
        return t["wrong"] == 0 and t["5xx"] == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if not harness.WASM.exists():
        sys.exit(f"{harness.WASM} is missing: run `make build` first")
    sys.exit(0 if Soak(args.seconds, args.threads).run() else 1)


if __name__ == "__main__":
    main()
