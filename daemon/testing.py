"""Start a real daemon as a subprocess and wait for it: shared by the tests and benchmarks/bench_daemon.py.

The daemon runs exactly as a user would start it (`python -m daemon serve ...`), with its own runtime and state
directories so that runs never collide with each other or with a daemon of the user's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .client import DaemonClient, DaemonUnavailable
from .memory import process_rss_bytes
from .protocol import StatusResult

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    endpoint: str
    home: Path  # XDG_RUNTIME_DIR / XDG_STATE_HOME of this daemon
    log_path: Path  # its stdout + stderr
    env: dict

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kwargs) -> DaemonClient:
        return DaemonClient(self.endpoint, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def wait_ready(self, timeout_s: float = 300.0, **client_kwargs) -> StatusResult:
        """Wait until `status` says ready; raises RuntimeError with the daemon's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        with self.client(timeout_s=2.0, **client_kwargs) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    status = client.status()
                except DaemonUnavailable:
                    time.sleep(0.2)
                    continue
                if status.state == "ready":
                    return status
                if status.state == "failed":
                    raise RuntimeError(f"the daemon failed to load: {status.error}\n{self.log_tail()}")
                time.sleep(0.2)
        raise RuntimeError(f"the daemon was not ready within {timeout_s:g} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int | None:
        return process_rss_bytes(self.pid)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def daemon_env(home: Path, extra: dict | None = None) -> dict:
    """The environment of a daemon (or CLI) confined to `home`: runtime dir, state/log dir, offline hub."""
    runtime = home / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    os.chmod(runtime, 0o700)
    env = dict(os.environ)
    env.update(
        XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(home / "state"), HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
    )
    env.pop("MOT_DAEMON_ENDPOINT", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def spawn_daemon(
    home: Path, *, endpoint: str | None = None, preset: str | None = "tiny", device: str = "cpu", args: list[str] = (),
    env_extra: dict | None = None,
) -> DaemonProcess:
    """Start `python -m daemon serve` confined to `home` (endpoint None: the default ipc socket under home; preset
    None: the experts a `--checkpoint` in `args` names)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = daemon_env(home, env_extra)
    if endpoint is None:
        endpoint = f"ipc://{home / 'run' / 'mot-cuda' / 'daemon.sock'}"
        cmd_endpoint: list[str] = []
    else:
        cmd_endpoint = ["--endpoint", endpoint]
    cmd = [sys.executable, "-m", "daemon", "serve", *(["--preset", preset] if preset else []), "--device", device,
           *cmd_endpoint, *args]
    log_path = home / "daemon-output.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return DaemonProcess(proc=proc, endpoint=endpoint, home=home, log_path=log_path, env=env)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
