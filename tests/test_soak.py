"""`make soak` itself (tests/soak.py), run short in a subprocess on the front end of this
pass: it passes with its totals; a transport error is counted and reported, never kills a
traffic thread, and fails the soak; a hang is ended by its watchdog, with the totals so far
and no process left behind."""

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness
from test_harness import alive

TESTS = Path(__file__).resolve().parent
# The soak's own error handling and watchdog do not depend on the front end.
machinery = pytest.mark.skipif(harness.NATIVE_MODE, reason="the soak's own machinery: wasm pass")


def run_soak(tmp_path, seconds, patch="", extra=(), deadline=None):
    """Runs the soak (with `patch`, Python run first in its process) and answers
    (exit status, output, seconds it took)."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import soak
    """) + textwrap.dedent(patch) + textwrap.dedent(f"""
        sys.argv = ["soak.py", "--seconds", "{seconds}", "--threads", "2", *{list(extra)!r}]
        soak.main()
    """))
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True,
                         timeout=deadline or seconds + 90, cwd=tmp_path)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - started


def totals(output):
    match = re.search(r"soak \((\w+)\): \d+ s, (\d+) requests .*?(\d+) rolls, (\d+) keygatectl "
                      r"restarts", output)
    assert match, output[-3000:]
    return {"requests": int(match.group(2)), "rolls": int(match.group(3)),
            "restarts": int(match.group(4))}


def test_a_short_soak_passes_with_its_totals(tmp_path):
    status, output, _ = run_soak(tmp_path, 10, extra=("--restart-every", "3"))
    assert status == 0, output[-3000:]
    got = totals(output)
    assert got["requests"] > 100 and got["rolls"] >= 3 and got["restarts"] == 1, got
    assert "wrong decisions 0, 5xx 0, transport errors 0" in output



def test_a_roll_envoy_applies_before_its_answer_is_back_is_no_wrong_decision(tmp_path):
    """The watch can bring a roll to Envoy before the roll's answer reaches the soak's
    roller (the native module takes a few ms; a loaded client longer). Here the first roll's
    answer is handed back only once Envoy refuses the old key and the traffic threads have
    sent more requests with it: those 401s are the roll's, not wrong decisions."""
    patch = """
        import time
        import httpx
        import ctl
        soaks = []
        _init = soak.Soak.__init__
        def init(self, *args, **kwargs):
            _init(self, *args, **kwargs)
            soaks.append(self)
        soak.Soak.__init__ = init
        _api = ctl.Keygatectl.api
        def api(self, method, path, body=None):
            answer = _api(self, method, path, body)
            if path.endswith("/roll") and not getattr(api, "slowed", False):
                api.slowed = True
                run = soaks[0]
                old = run.churn[-1]["key"]
                deadline = time.monotonic() + 20
                while httpx.get(run.envoy.url + "/v3/devices",
                                headers={"authorization": f"token {old}"}).status_code != 401:
                    assert time.monotonic() < deadline, "Envoy never refused the rolled key"
                    time.sleep(0.01)
                with run.lock:
                    seen = run.totals["requests"]
                while run.totals["requests"] < seen + 300:
                    assert time.monotonic() < deadline, "no traffic after the roll"
                    time.sleep(0.01)
                print("soak test: the roll's answer came back after Envoy refused the old key "
                      "and 300 more requests", flush=True)
            return answer
        ctl.Keygatectl.api = api
    """
    status, output, _ = run_soak(tmp_path, 8, patch, extra=("--restart-every", "1000"))
    assert "the roll's answer came back after Envoy refused the old key" in output, \
        output[-3000:]
    assert status == 0, output[-3000:]
    assert "wrong decisions 0, 5xx 0, transport errors 0" in output
    refused = re.search(r"(\d+) old keys refused before their roll's answer", output)
    assert refused and int(refused.group(1)) > 0, output[-3000:]


@machinery
def test_transport_errors_are_counted_and_fail_the_soak_without_killing_it(tmp_path):
    """Envoy killed mid-run: every later request fails to connect. The traffic threads
    count each failure and go on; the soak ends on time with the errors by kind."""
    patch = """
        import os, signal, threading
        _start = soak.start_envoy
        def start_envoy(up, ctl):
            envoy = _start(up, ctl)
            threading.Timer(3, os.kill, (envoy.proc.pid, signal.SIGKILL)).start()
            return envoy
        soak.start_envoy = start_envoy
    """
    status, output, took = run_soak(tmp_path, 6, patch)
    assert status == 1, output[-3000:]
    assert totals(output)["requests"] > 0
    assert re.search(r"error: \d+ × ConnectError: \[Errno 111\] Connection refused", output), \
        output[-3000:]
    assert "PROBLEM: traffic thread" not in output and "Traceback" not in output, output[-3000:]


@machinery
def test_a_hung_soak_is_ended_by_its_watchdog_with_its_totals(tmp_path):
    """The soak hangs on its way out (reading Envoy's stats never returns): the watchdog
    ends it within its margin, prints the totals so far, and leaves no Envoy or keygatectl
    running."""
    pids = tmp_path / "pids"
    patch = f"""
        import threading
        soak.WATCHDOG_MARGIN = 5
        soak.Soak.envoy_stats = lambda self: threading.Event().wait()
        _start = soak.start_envoy
        def start_envoy(up, ctl):
            envoy = _start(up, ctl)
            open({str(pids)!r}, "w").write(f"{{envoy.proc.pid}} {{ctl.proc.pid}}")
            return envoy
        soak.start_envoy = start_envoy
    """
    status, output, took = run_soak(tmp_path, 3, patch, deadline=60)
    assert status == 3, output[-3000:]
    assert "WATCHDOG" in output
    assert totals(output)["requests"] > 0
    assert not any(alive(int(p)) for p in pids.read_text().split())
