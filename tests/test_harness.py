"""The harness's own promises, which other suites rely on:

- `connections_on_every_worker` really holds one connection on each of Envoy's workers (so
  "refused on every worker" is proven per worker, not sampled);
- the processes a test starts die with it: a pytest killed with SIGKILL leaves no Envoy and
  no keygatectl behind; keygatectl that does not come up in time is stopped by `start`."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness
from conftest import start_envoy
from ctl import Keygatectl

TESTS = Path(__file__).resolve().parent


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not met in {timeout} s")


def test_connections_on_every_worker_holds_one_on_each_worker(upstream):
    """Each connection is where the helper says: closing the one it pinned to worker w
    lowers worker w's active connections, and no other worker's."""
    envoy = start_envoy(upstream, concurrency=4)
    try:
        port = int(envoy.url.rsplit(":", 1)[1])
        workers = harness.connections_on_every_worker(envoy)
        try:
            assert sorted(workers.by_worker) == [0, 1, 2, 3]
            assert set(workers.answers("sk_test_nope")) == {0, 1, 2, 3}
            for w, conn in sorted(workers.by_worker.items()):
                before = harness.listener_worker_counts(envoy, port, "downstream_cx_active")
                conn.close()
                expected = {**before, w: before[w] - 1}
                wait_for(lambda: harness.listener_worker_counts(
                    envoy, port, "downstream_cx_active") == expected, what=f"worker {w}")
        finally:
            workers.close()
    finally:
        envoy.stop()


def alive(pid):
    """Whether `pid` runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_pytest_leaves_no_envoy_and_no_keygatectl(tmp_path):
    pids_file = tmp_path / "pids"
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        import harness
        from ctl import Keygatectl

        def test_hold():
            ports = {{9901: harness.free_port(), 10000: harness.free_port(), 8081: harness.free_port()}}
            envoy = harness.Envoy(harness.localize(harness.load_example("envoy.yaml"), ports))
            envoy.start()
            ctl = Keygatectl().start()
            Path({str(pids_file)!r}).write_text(f"{{envoy.proc.pid}} {{ctl.proc.pid}}")
            time.sleep(300)
    """))
    runner = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-s", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--rootdir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids = []
    try:
        wait_for(lambda: pids_file.exists() and pids_file.read_text() or runner.poll() is not None,
                 timeout=60, what="the inner pytest started Envoy and keygatectl")
        assert runner.poll() is None, runner.stdout.read().decode(errors="replace")
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(alive(p) for p in pids)
        runner.kill()  # SIGKILL: no finally, no atexit, no fixture teardown runs
        runner.wait(timeout=10)
        wait_for(lambda: not any(alive(p) for p in pids), timeout=10,
                 what="Envoy and keygatectl gone after their pytest was killed")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        runner.stdout.close()
        for pid in pids:  # whatever survived (the test failed): do not leave it running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_keygatectl_that_does_not_come_up_in_time_is_stopped():
    ctl = Keygatectl()
    with pytest.raises(TimeoutError, match="did not start"):
        ctl.start(timeout=0)
    assert ctl.proc.poll() is not None, "keygatectl still runs after start gave up"
    ctl.stop()


def test_the_secret_scan_reads_a_snapshot_while_threads_issue_keys(tmp_path):
    """The soak issues keys on several threads while a scan runs (each keygatectl restart):
    the scan must read a copy, not the set being added to."""
    import threading

    import keys
    import secret_scan

    for _ in range(20000):
        keys.make_key()
    clean = tmp_path / "log"
    clean.write_text("no key here sk_test_short\n")
    stop = threading.Event()

    def issue():
        while not stop.is_set():
            keys.make_key()

    adder = threading.Thread(target=issue)
    adder.start()
    try:
        for _ in range(30):
            secret_scan.scan([clean])
    finally:
        stop.set()
        adder.join()
