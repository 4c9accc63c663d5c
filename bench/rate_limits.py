"""`make bench`'s rate-limit section: what a key's limit costs per request (the limited
configurations in the comparison), and how close to the limit the admitted rate stays when
a key sends twice its limit for a while on a 2-worker Envoy."""

import json
import threading
import time

import httpx

# Far above any bench traffic: the limited configurations measure the check, never a 429.
UNREACHED = {"requests": 1_000_000, "per": "second"}


def with_limit(keyset_json_entries, index=0, limit=UNREACHED):
    """The key-map entries (JSON texts) with entry `index` (the bench's secret key) limited."""
    entries = list(keyset_json_entries)
    entry = json.loads(entries[index])
    entry["rate_limit"] = limit
    entries[index] = json.dumps(entry)
    return "[" + ",".join(entries) + "]"


def drive_at(url, key, rate, seconds, connections=8):
    """Sends `rate` requests a second for `seconds` over `connections` keep-alive
    connections (spread as a client pool spreads them); counts the answers by status."""
    counts = {}
    lock = threading.Lock()
    per_conn = rate / connections
    start = time.monotonic()

    def run():
        with httpx.Client(base_url=url, timeout=5) as client:
            sent = 0
            while True:
                due = start + sent / per_conn
                now = time.monotonic()
                if due - start >= seconds:
                    return
                if due > now:
                    time.sleep(due - now)
                status = client.get("/v3/devices",
                                    headers={"authorization": f"Bearer {key}"}).status_code
                with lock:
                    counts[status] = counts.get(status, 0) + 1
                sent += 1

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def accuracy_rows(results, limit_rps, seconds):
    rows = []
    for label, counts in results:
        admitted = counts.get(200, 0)
        rate = admitted / seconds
        rows.append([label, f"{limit_rps}/s", f"{2 * limit_rps}/s", f"{rate:.1f}/s",
                     f"{(rate - limit_rps) / limit_rps * 100:+.1f}%", str(counts.get(429, 0)),
                     str(sum(v for k, v in counts.items() if k not in (200, 429)))])
    return rows
