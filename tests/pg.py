"""PostgreSQL for the suites that need it (keygatectl replicas, the store on PostgreSQL):
a database of its own per test on the server KEYGATE_TEST_POSTGRES_URL names
(`scripts/postgres.sh run pytest …` starts one), and keygatectl replicas serving from it.

Without that variable the tests are skipped, unless KEYGATE_REQUIRE_POSTGRES=1 (set by the
Makefile's test targets): then a missing server fails them, so `make test` can never pass
with the PostgreSQL suites silently left out.

keygatectl reaches the server over TLS with the server's certificate checked
(`sslmode=verify-full`) whenever KEYGATE_TEST_POSTGRES_TLS names the test CA's directory, as
`scripts/postgres.sh run` sets it (required with KEYGATE_REQUIRE_POSTGRES=1)."""

import glob
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

import secret_scan
from ctl import Keygatectl

SERVER_URL = os.environ.get("KEYGATE_TEST_POSTGRES_URL", "")
TLS_DIR = os.environ.get("KEYGATE_TEST_POSTGRES_TLS", "")
REQUIRED = os.environ.get("KEYGATE_REQUIRE_POSTGRES", "") == "1"


def require_server():
    """Skips the calling test when no server is configured, or fails it when one is required."""
    if SERVER_URL:
        if REQUIRED and not TLS_DIR:
            pytest.fail("KEYGATE_REQUIRE_POSTGRES=1 but KEYGATE_TEST_POSTGRES_TLS is unset "
                        "(scripts/postgres.sh run starts PostgreSQL with TLS)", pytrace=False)
        return
    why = "KEYGATE_TEST_POSTGRES_URL is unset (scripts/postgres.sh run … starts a PostgreSQL)"
    if REQUIRED:
        pytest.fail(f"KEYGATE_REQUIRE_POSTGRES=1 but {why}", pytrace=False)
    pytest.skip(why)


def pg_tool(name):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise RuntimeError(f"{name} not found: apt-get install -y postgresql")
    return found if isinstance(found, str) else found[0]


class Database:
    """A database of its own on the test server. Its URL carries no password: keygatectl,
    psql and pg_dump take it from PGPASSWORD, so it never shows in a process list."""

    def __init__(self, monkeypatch, name):
        server = urllib.parse.urlsplit(SERVER_URL)
        self.name = name
        self.env = {"PGHOST": server.hostname, "PGPORT": str(server.port or 5432),
                    "PGUSER": server.username or "", "PGPASSWORD": server.password or ""}
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        self.url = f"postgres://{server.username}@{server.hostname}:{server.port}/{name}"
        if TLS_DIR:
            # The server's certificate names `localhost`: connect by that name (hostaddr
            # saves the lookup) and check it, as an operator's verify-full URL does.
            self.url = (f"postgres://{server.username}@localhost:{server.port}/{name}"
                        f"?hostaddr={server.hostname}&sslmode=verify-full"
                        f"&sslrootcert={TLS_DIR}/ca.crt")
        self.psql("postgres", f"DROP DATABASE IF EXISTS {name}")
        self.psql("postgres", f"CREATE DATABASE {name}")

    def psql(self, dbname, sql):
        out = subprocess.run([pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                              "-d", dbname, "-c", sql],
                             capture_output=True, text=True, timeout=30, env=dict(os.environ, **self.env))
        assert out.returncode == 0, out.stderr
        return out.stdout

    def keygatectl_sessions(self):
        """(TLS?, TLS version) of each connection keygatectl holds to this database."""
        rows = self.psql("postgres", "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s "
                         "JOIN pg_stat_activity a USING (pid) "
                         f"WHERE a.datname = '{self.name}' AND a.application_name = 'keygatectl'")
        return [(ssl == "t", version) for ssl, version in
                (line.split("|") for line in rows.splitlines() if line)]

    def drop(self, workdir):
        """Dumps the database for the secret scan (digests and hints only, never a plaintext
        key), then drops it."""
        dump = Path(workdir) / "pg_dump.sql"
        out = subprocess.run([pg_tool("pg_dump"), "-d", self.name, "-f", str(dump)],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, **self.env))
        assert out.returncode == 0, out.stderr
        try:
            secret_scan.scan([dump])
        finally:
            self.psql("postgres", f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


@pytest.fixture
def database(request, monkeypatch, tmp_path):
    """A fresh database on the test server (skip or fail without one: `require_server`)."""
    require_server()
    name = "keygate_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    name += f"_{os.getpid()}"
    db = Database(monkeypatch, name)
    yield db
    db.drop(tmp_path)


class Replica(Keygatectl):
    """A keygatectl serving from the shared PostgreSQL database. `start` and `cli` pass the
    URL where Keygatectl passes its SQLite path; replicas share one admin token."""

    def __init__(self, database, token=None):
        super().__init__()
        self.db = database.url
        if token:
            self.token = token
        # Replicas share the sync token (the database holds its digest); each has a copy.
        self.sync_token = database.__dict__.setdefault("sync_token", self.sync_token)

    def kill(self):
        """SIGKILL: as a crash or a lost machine."""
        self.proc.kill()
        self.proc.wait(timeout=10)
