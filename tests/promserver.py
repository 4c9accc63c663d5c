"""A real Prometheus (Debian's `prometheus` package; `make integration` installs it) for the
metrics suites: it scrapes the targets a test names every 200 ms, on loopback only, keeps its
data in a temporary directory, and answers PromQL through its HTTP API. `promtool check
metrics` is Prometheus's own strict reader (and linter) of the text exposition format."""

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harness import free_port, spawn, stop_process


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: apt-get install -y prometheus (make integration "
                    "installs it)", pytrace=False)
    return path


def promtool_check(text):
    """(exit status, output) of `promtool check metrics` on an exposition."""
    out = subprocess.run([tool("promtool"), "check", "metrics"], input=text,
                         capture_output=True, text=True, timeout=30)
    return out.returncode, (out.stdout + out.stderr).strip()


class Prometheus:
    """`jobs`: {job name: {"target": "127.0.0.1:port", "path": "/metrics",
    "token_file": optional bearer-token file}}."""

    def __init__(self, jobs):
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-prometheus-"))
        self.port = free_port()
        scrape = []
        for name, job in jobs.items():
            entry = {"job_name": name, "metrics_path": job.get("path", "/metrics"),
                     "static_configs": [{"targets": [job["target"]]}]}
            if job.get("token_file"):
                entry["authorization"] = {"credentials_file": str(job["token_file"])}
            scrape.append(entry)
        config = {"global": {"scrape_interval": "200ms", "scrape_timeout": "150ms",
                             "evaluation_interval": "1s"},
                  "scrape_configs": scrape}
        (self.dir / "prometheus.yml").write_text(json.dumps(config))
        self.log_path = self.dir / "prometheus.log"
        self.proc = None

    def start(self, timeout=30):
        self.log = open(self.log_path, "wb")
        self.proc = spawn([tool("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={self.dir / 'data'}",
                           f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                          stdout=self.log, stderr=subprocess.STDOUT, cwd=str(self.dir))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.read_log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready in {timeout} s:\n{self.read_log()}")

    def stop(self):
        if self.proc:
            stop_process(self.proc)
        if getattr(self, "log", None):
            self.log.close()

    def read_log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def targets(self):
        """job → (health, last error) of its target."""
        return {t["labels"]["job"]: (t["health"], t["lastError"])
                for t in self.api("targets")["activeTargets"]}

    def query(self, expr):
        """An instant query's vector: [(labels without __name__, value)]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [({k: v for k, v in r["metric"].items() if k != "__name__"}, float(r["value"][1]))
                for r in data["result"]]

    def wait_for(self, expr, predicate, timeout=20):
        """Polls `expr` until `predicate(result)` holds; answers the result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr}: {result} after {timeout} s; targets "
                                     f"{self.targets()}")
            time.sleep(0.2)
