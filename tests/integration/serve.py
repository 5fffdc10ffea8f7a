"""Run ``mailgate serve`` as a real process, for tests of signals and crashes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mailgate exited with {proc.returncode}:\n{read_log(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"mailgate did not listen on {port}:\n{read_log(proc)}")


def read_log(proc: subprocess.Popen) -> str:
    path = getattr(proc, "log_path", None)
    return Path(path).read_text() if path and Path(path).exists() else ""


class ServeProcess:
    """``python -m gateway serve`` in ``workdir`` with a config file (or none)."""

    def __init__(self, workdir: Path, config: str | None = None, env: dict | None = None):
        self.workdir = workdir
        self.lmtp_port = free_port()
        self.http_port = free_port()
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def write_config(self, extra: str = "") -> "ServeProcess":
        path = self.workdir / "gateway.toml"
        path.write_text(
            f'[storage]\nurl = "sqlite:///{self.workdir / "mailgate.db"}"\n'
            f'[lmtp]\nlisten = "127.0.0.1:{self.lmtp_port}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\nadmin_token = "t"\n'
            '[[directory.connectors]]\nname = "support"\n'
            'primary_address = "support@example.test"\n' + extra)
        self.config = str(path)
        return self

    def start(self) -> "ServeProcess":
        args = [sys.executable, "-m", "gateway", "serve"]
        if self.config:
            args += ["--config", self.config]
        log_path = self.workdir / f"serve-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=self.workdir, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.proc.log_path = log_path
        wait_for_port(self.lmtp_port, self.proc)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return read_log(self.proc) if self.proc else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
