"""The daemon the language server starts itself (autostart, or the restart command): how to run `mot-daemon`, the
child process and its log file, why it failed, and how it is stopped when the server exits. A daemon somebody
else started is never handled here."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon import protocol as P
from daemon.endpoints import Endpoint, log_dir
from lsprotocol import types

from .settings import Settings

log = logging.getLogger(__name__)

# Overrides the command that starts a daemon (shell words; "serve --endpoint ..." are appended).
DAEMON_COMMAND_ENV = "MOT_LSP_DAEMON_COMMAND"

Tell = Callable[[types.MessageType, str], None]


class SpawnFailed(Exception):
    """The daemon could not be started at all; the message says which command and why."""


def daemon_command() -> list[str]:
    """How to run `mot-daemon`: $MOT_LSP_DAEMON_COMMAND, the script next to this Python, on PATH, or the module."""
    override = os.environ.get(DAEMON_COMMAND_ENV)
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).with_name("mot-daemon")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("mot-daemon")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "daemon"]


def log_tail(path: Path | None, lines: int = 6, max_bytes: int = 4000) -> str:
    """The last non-blank lines of a log file (what the user is shown when our daemon died)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(could not read {path}: {e})"
    return "\n".join(line for line in text.splitlines()[-lines:] if line.strip())


class OwnedDaemon:
    """The daemon process this server started (at most one at a time), its log, and why it failed."""

    SPAWN_BACKOFF_S = 10.0  # the least time between two starts

    def __init__(self, *, tell: Tell):
        self._tell = tell
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.last_spawn = -1e9
        self.failure: str | None = None  # set when a daemon we started exited with an error (or could not start)

    @property
    def running(self) -> bool:
        proc = self.process
        return proc is not None and proc.poll() is None

    def alive(self, pid: int) -> bool | None:
        """Whether `pid` — our child — still runs (poll() reaps it: a zombie answers kill(pid, 0)); None when
        `pid` is not our child."""
        proc = self.process
        if proc is None or proc.pid != pid:
            return None
        return proc.poll() is None

    def may_spawn(self) -> bool:
        return time.monotonic() - self.last_spawn >= self.SPAWN_BACKOFF_S

    def still_starting(self) -> bool:
        """True while the daemon we started runs (not answering yet, as the caller found). One that exited is
        forgotten; when it failed, the user is told with the end of its log, once."""
        proc = self.process
        if proc is None:
            return False
        code = proc.poll()
        if code is None:
            return True
        self.process = None
        if code > 0:
            self.failure = (
                f"the daemon started by mot-lsp exited with status {code}. Its log ({self.log_path}) ends with:\n"
                f"{log_tail(self.log_path)}"
            )
            self._tell(types.MessageType.Error, f"MoT: {self.failure}")
        else:
            log.info("the daemon we started exited (status %s)", code)
        return False

    def spawn(self, endpoint: Endpoint, settings: Settings) -> None:
        """Start `mot-daemon serve` for the endpoint and the settings' preset/checkpoint, its output appended to
        the log file. Raises SpawnFailed (the user is told) when it cannot be started."""
        command = daemon_command() + ["serve", "--endpoint", endpoint.address]
        if settings.preset:
            command += ["--preset", settings.preset]
        if settings.checkpoint:
            command += ["--checkpoint", settings.checkpoint]
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "mot-lsp-daemon.log"
        self.last_spawn = time.monotonic()
        env = dict(os.environ)
        if command[1:3] == ["-m", "daemon"]:  # the module fallback: make the daemon package importable there too
            root = str(Path(P.__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} mot-lsp starts: {shlex.join(command)}\n".encode())
            out.flush()
            try:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env=env,
                )
            except OSError as e:
                self.failure = f"could not start `{shlex.join(command)}`: {e}"
                self._tell(types.MessageType.Error, f"MoT: {self.failure}")
                raise SpawnFailed(self.failure) from None
        log.info("started a daemon (pid %d): %s; log %s", self.process.pid, shlex.join(command), self.log_path)

    def stop(self, ask_to_shut_down: Callable[[], None], timeout_s: float = 10.0) -> None:
        """Stop the daemon we started: `ask_to_shut_down()` (a shutdown request; it logs its own failure), then
        SIGTERM, then SIGKILL."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        ask_to_shut_down()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("our daemon (pid %d) ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(5)
