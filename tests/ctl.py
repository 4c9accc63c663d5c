"""Runs the real keygatectl for integration tests: `serve` on a free loopback port with a
temporary database, the HTTP API with the admin token, the key map with the sync token
(`sync_token`: what the filters' `bearer_token` must be), and the CLI on the same file."""

import json
import os
import re
import secrets
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import keys
import secret_scan
from harness import ROOT, spawn, stop_process

CTL = ROOT / "target" / "release" / "keygatectl"


def remember_keys(doc):
    """Registers every plaintext key in an API answer for the secret scan."""
    if isinstance(doc, dict):
        if isinstance(doc.get("key"), str):
            keys.remember(doc["key"])
        for value in doc.values():
            remember_keys(value)
    elif isinstance(doc, list):
        for value in doc:
            remember_keys(value)
    return doc


class Keygatectl:
    def __init__(self, workdir=None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="keygatectl-"))
        self.db = self.dir / "keygate.db"
        self.token = "kgtest_" + secrets.token_hex(16)
        self.sync_token = "kgsync_test_" + secrets.token_hex(16)
        self.sync_token_file = self.dir / "sync-token"
        self.proc = None
        self.port = None
        self.log_path = self.dir / "keygatectl.log"

    def start(self, port=0, timeout=10, extra_args=()):
        env = dict(os.environ, KEYGATE_ADMIN_TOKEN=self.token)
        fd = os.open(self.sync_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.sync_token + "\n")
        self.log = open(self.log_path, "ab")
        self.proc = spawn(
            [str(CTL), "--database", str(self.db), "serve", "--listen", f"127.0.0.1:{port}",
             "--purge-interval", "1s", "--sync-token-file", str(self.sync_token_file),
             *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.read_log())
            if match and (port == 0 or int(match.group(1)) == port) and self.healthy(int(match.group(1))):
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                stop_process(self.proc)
                raise RuntimeError(f"keygatectl exited:\n{self.read_log()}")
            time.sleep(0.05)
        # Not ready in time: stopped here, so no caller has to (a fixture that failed to
        # start has no teardown).
        stop_process(self.proc)
        raise TimeoutError(f"keygatectl did not start in {timeout} s:\n{self.read_log()}")

    def healthy(self, port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        """Stops the server, then checks its log and database files hold no plaintext key."""
        if self.proc:
            stop_process(self.proc)
        if getattr(self, "log", None):
            self.log.close()
        secret_scan.scan([self.log_path, *self.dir.glob("keygate.db*")])

    def read_log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return remember_keys(json.loads(r.read() or b"null"))
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read()!r}") from None

    def key_map(self, query="", headers=None):
        """(status, headers, body) of GET /v1/keymap?<query> with the sync token."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/keymap" + (f"?{query}" if query else ""),
            headers={"authorization": f"Bearer {self.sync_token}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def store_status(self):
        """{"store": <store id>, "version": <key map version>} from the database."""
        return self.cli("keymap", "status")

    def backup(self, path=None):
        """A consistent copy of the SQLite database as it is now (SQLite's backup API, as
        `sqlite3 keygate.db .backup FILE`); returns its path."""
        path = Path(path or self.dir / f"backup-{secrets.token_hex(4)}.db")
        with sqlite3.connect(self.db) as live, sqlite3.connect(path) as copy:
            live.backup(copy)
        live.close()
        copy.close()
        return path

    def restore(self, backup):
        """Writes `backup` back into the database in place, as `sqlite3 keygate.db ".restore
        FILE"` does: safe under a running server, which notices within a second that the
        version went back."""
        live = sqlite3.connect(self.db, timeout=10)
        copy = sqlite3.connect(backup)
        try:
            copy.backup(live)
        finally:
            copy.close()
            live.close()

    def cli(self, *args):
        out = subprocess.run(
            [str(CTL), "--database", str(self.db), "--json", *args],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return remember_keys(json.loads(out.stdout))

    def cli_text(self, *args):
        """What a person sees: the CLI's table output."""
        out = subprocess.run([str(CTL), "--database", str(self.db), *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create_account(self):
        """The account and its keys by kind name (sk_test, pk_test, sk_production, ...)."""
        doc = self.api("POST", "/v1/accounts", {"name": "test"})
        keys = {}
        for k in doc["keys"]:
            name = f"{k['type'][0]}k_{k['environment']}"
            keys[name] = k
        return doc["account"]["id"], keys
