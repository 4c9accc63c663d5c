"""Watching the key map through a real Envoy (2 workers) and a real keygatectl: the fetcher
(the wasm `keygate_sync` service, or the native module's thread) asks keygatectl to hold
each request until the map changes, so a roll reaches every worker as fast as the network
carries it, not at the next poll.

To prove it is the watch and not a poll, every test sets a poll interval (60 s, jitter 0)
far longer than the deadline it waits with: a fetcher that polled could not pass.

- a roll is refused on every worker long before the interval;
- keygatectl killed (SIGKILL) during a watch: the last good map serves, and the fetcher
  comes back to the current map once keygatectl does;
- a relay that closes connections idle for 2 s (as proxies and load balancers do): the
  fetcher shortens its watches and keeps converging;
- PostgreSQL replicas: a roll through replica A reaches Envoy watching replica B.
"""

import select
import socket
import threading
import time

import pytest

import harness
from ctl import Keygatectl
from pg import Replica, database  # noqa: F401

# The poll interval no test may wait for: only a watch converges within DEADLINE.
INTERVAL_MS = 60_000
DEADLINE = 20.0


def wait_for(predicate, timeout=DEADLINE, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{what}: not met within {timeout} s")


def start_envoy(upstream, ctl, port=None, **settings):
    """Envoy from envoy-sync.yaml watching keygatectl at `port` (default: ctl's own)."""
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: port or ctl.port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": INTERVAL_MS, "jitter": 0, "wait": 50, "timeout_ms": 2000,
                    "bearer_token": ctl.sync_token})
    service.update(settings)
    harness.set_service_config(config, service)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start()
    envoy.url = f"http://127.0.0.1:{ports[10000]}"
    return envoy


def sync_counter(envoy, name):
    return envoy.counters(harness.STATS + "keygate.sync.").get(name, 0)


def roll_and_converge(ctl, workers, key, via=None, what="the roll"):
    """Rolls `key` (through `via`, default ctl) and waits until every worker refuses it and
    accepts its successor. Returns the successor and the seconds it took."""
    rolled = (via or ctl).api("POST", f"/v1/keys/{key['key_id']}/roll", {})
    start = time.monotonic()
    new = rolled["new_key"]
    wait_for(lambda: workers.everywhere(key["key"]) == {(401, "invalid_api_key")}
             and workers.everywhere(new["key"]) == {(200, None)}, what=what)
    return new, time.monotonic() - start


@pytest.fixture
def ctl(request):
    ctl = Keygatectl().start()
    request.addfinalizer(ctl.stop)
    return ctl


def test_a_roll_is_refused_on_every_worker_long_before_the_poll_interval(ctl, upstream, request):
    envoy = start_envoy(upstream, ctl)
    request.addfinalizer(envoy.stop)
    # The account is made after Envoy took its first map: its keys arrive by a watch too.
    wait_for(lambda: sync_counter(envoy, "updates") >= 1, what="the first map")
    _, keys = ctl.create_account()
    key = keys["sk_test"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(key["key"]) == {(200, None)}, what="the new account")
        took = []
        for i in range(3):
            key, seconds = roll_and_converge(ctl, workers, key, what=f"roll {i + 1}")
            took.append(seconds)
    print(f"\nold key refused on each of {envoy.concurrency} workers "
          f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms after each roll "
          f"(poll interval {INTERVAL_MS} ms)")


def test_keygatectl_killed_during_a_watch_keeps_the_last_map_then_catches_up(ctl, upstream, request):
    # A short interval: after a failure it is the retry delay (doubling up to 10 s).
    envoy = start_envoy(upstream, ctl, interval_ms=500)
    request.addfinalizer(envoy.stop)
    _, keys = ctl.create_account()
    key = keys["sk_test"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(key["key"]) == {(200, None)}, what="the account")
        # A watch is held now (the next goes out as soon as an answer is in): kill the
        # server under it, as a crash would.
        errors = sync_counter(envoy, "errors")
        ctl.proc.kill()
        ctl.proc.wait(timeout=10)
        wait_for(lambda: sync_counter(envoy, "errors") >= errors + 2, what="the cut watch and its retry")
        assert workers.everywhere(key["key"]) == {(200, None)}, "the last good map serves"
        # Changed on the database while the server is down, then the server comes back.
        rolled = ctl.cli("key", "roll", key["key_id"])
        new = rolled["new_key"]
        ctl.log.close()
        ctl.start(port=ctl.port)
        wait_for(lambda: workers.everywhere(key["key"]) == {(401, "invalid_api_key")}
                 and workers.everywhere(new["key"]) == {(200, None)}, timeout=40,
                 what="the change made while keygatectl was down")
        # Watching again: a roll through the API reaches every worker.
        roll_and_converge(ctl, workers, new, what="a roll after the restart")


class IdleCuttingRelay:
    """A TCP relay to `target_port` on loopback that closes any connection through it once
    no byte has passed either way for `idle` seconds, as a proxy's idle timeout does."""

    def __init__(self, target_port, idle):
        self.target_port = target_port
        self.idle = idle
        self.cuts = 0
        self.stopped = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        peers = {client: upstream, upstream: client}
        last = time.monotonic()
        try:
            while not self.stopped.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
                    last = time.monotonic()
                if time.monotonic() - last >= self.idle:
                    self.cuts += 1
                    return
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def stop(self):
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=5)


def test_a_proxy_that_cuts_idle_connections_makes_watches_shorter_and_rolls_keep_arriving(
        ctl, upstream, request):
    relay = IdleCuttingRelay(ctl.port, idle=2.0)
    request.addfinalizer(relay.stop)
    # Watches of 10 s through a path that cuts at 2 s.
    envoy = start_envoy(upstream, ctl, port=relay.port, wait=10)
    request.addfinalizer(envoy.stop)
    _, keys = ctl.create_account()
    key = keys["sk_test"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(key["key"]) == {(200, None)}, what="the account")
        # Cut watches are asked again at once; rolls keep arriving meanwhile.
        key, _ = roll_and_converge(ctl, workers, key, what="a roll while watches are cut")
        wait_for(lambda: "watching 1 s at a time" in envoy.read_log(), timeout=90,
                 what="watches shortened below the cut")
        assert relay.cuts >= 2 and sync_counter(envoy, "errors") >= 2
        # Short watches now live through the path: no more cuts, and rolls arrive.
        cuts = relay.cuts
        for i in range(3):
            key, _ = roll_and_converge(ctl, workers, key, what=f"roll {i + 1} after shortening")
        assert relay.cuts == cuts, "a watch shorter than the idle timeout is never cut"


def test_a_roll_through_one_replica_wakes_envoy_watching_the_other(upstream, database, request):
    a = Replica(database).start()
    request.addfinalizer(a.stop)
    b = Replica(database, token=a.token).start()
    request.addfinalizer(b.stop)
    # Envoy watches B only; every change goes through A (B learns of it by NOTIFY).
    envoy = start_envoy(upstream, b)
    request.addfinalizer(envoy.stop)
    wait_for(lambda: sync_counter(envoy, "updates") >= 1, what="the first map")
    _, keys = a.create_account()
    key = keys["sk_test"]
    with harness.connections_on_every_worker(envoy) as workers:
        wait_for(lambda: workers.everywhere(key["key"]) == {(200, None)}, what="the account")
        took = []
        for i in range(3):
            key, seconds = roll_and_converge(b, workers, key, via=a, what=f"roll {i + 1}")
            took.append(seconds)
    print(f"\nroll through replica A → refused on every worker of Envoy watching B: "
          f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms (poll interval {INTERVAL_MS} ms)")
