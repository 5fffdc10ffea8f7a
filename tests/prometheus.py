"""A throwaway, real Prometheus scraping a running gateway with the shipped alert rules.

Why a real one: the rules in conf/prometheus/ must load, evaluate against what
mailgate really exports, and the scrape must parse; only Prometheus itself says
so. One instance = a temp dir with its config and TSDB, listening on a loopback
high port, scraping one target every second and evaluating rules every second.
Debian's ``prometheus`` package provides the binary (scripts/test installs it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "conf" / "prometheus" / "mailgate-alerts.yml"

CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: mailgate
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class PrometheusError(RuntimeError):
    """Prometheus could not be started or answered wrongly; the message says why."""


class PrometheusInstance:
    def __init__(self, target: str, port: int):
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed (apt-get install prometheus; "
                                  "scripts/test does it)")
        self.binary, self.target, self.port = binary, target, port
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-prometheus-"))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "PrometheusInstance":
        config = self.root / "prometheus.yml"
        config.write_text(CONFIG.format(rules=ALERT_RULES, target=self.target))
        self.log = (self.root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready in 30 s: {self.log_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body}")
        return body["data"]

    def wait_for(self, check, what: str, timeout: float = 30.0):
        """Call ``check()`` until it returns something true; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise PrometheusError(f"gave up waiting for {what}: {self.log_text()[-2000:]}")
