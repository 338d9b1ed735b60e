"""Sandboxed subprocesses: every compiler run and every run of untrusted code goes through `run_sandboxed`.

Untrusted code (model output, data-set code) is never built or run in the calling process (a daemon, the
language server): each build and run is a plain subprocess, started in a fresh temporary directory the caller
makes (``tempfile.TemporaryDirectory``) and removes, in its own session whose whole process group is killed at
the time limit (also grandchildren a program forks).  stdout is read up to ``max_output_bytes`` (the run is
killed past it when ``kill_on_overflow``), stderr up to ``max_stderr_bytes`` (64 KiB by default).  The
environment is scrubbed (`scrubbed_env`) to ``PATH``, ``HOME``/``TMPDIR`` = the temporary directory, ``LANG``,
plus ``CUDA_VISIBLE_DEVICES`` and ``LD_LIBRARY_PATH`` for nvcc and CUDA binaries: nothing else (tokens, keys) is
inherited.

Resource limits (core files off, file size, open files, CPU time and, for compilers and CPU-only programs, the
address space ``RLIMIT_AS``) are set by a tiny exec shim (`EXEC_SHIM`): the command runs as
``python -I -S -c EXEC_SHIM limits.json cmd...``, which sets the limits and execs the command, so the pid (and
the process group made by ``start_new_session``) is the command's own.  A shim instead of ``preexec_fn``
because ``preexec_fn`` is unsafe with thread pools.  When the exec itself fails the shim prints
``mot-sandbox: could not run CMD: why`` and exits 127 (`SandboxResult.start_failed`).

CUDA binaries get no ``RLIMIT_AS`` (`run_rlimits(..., cuda=True)`): the CUDA driver reserves tens to hundreds
of GiB of *virtual* address space (unified addressing) when it creates a context, so any useful limit makes
``cudaMalloc``/context creation fail; their device memory is bounded by the GPU and their time by the timeout.

This is process isolation, not a security sandbox: run untrusted model output in a container or VM.

Public pieces, reused by every harness (the functional check, the nvcc compile check, the GPU probe):
`run_sandboxed` -> `SandboxResult`, `scrubbed_env`, `compiler_rlimits`, `run_rlimits`, `kill_process_group`,
`describe_exit`, `compile_program` -> `Compiled`, and the text helpers `decode_output` and `clip_text`.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_COMPILE_TIMEOUT_S",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "MAX_STDERR_BYTES",
    "MAX_KEPT_TEXT",
    "RLIMIT_AS_COMPILER",
    "RLIMIT_AS_CPU_RUN",
    "EXEC_SHIM",
    "SandboxResult",
    "Compiled",
    "scrubbed_env",
    "compiler_rlimits",
    "run_rlimits",
    "kill_process_group",
    "run_sandboxed",
    "describe_exit",
    "compile_program",
    "decode_output",
    "clip_text",
]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_COMPILE_TIMEOUT_S = 180.0
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
MAX_STDERR_BYTES = 64 * 1024
MAX_KEPT_TEXT = 4000

_GIB = 1 << 30
RLIMIT_AS_COMPILER = 8 * _GIB
RLIMIT_AS_CPU_RUN = 2 * _GIB

# A limit setrlimit refuses (above the hard limit already in force, or unknown here) keeps the tighter one in force.
_SHIM_TAG = "mot-sandbox: "
_START_FAILED = _SHIM_TAG + "could not run "
EXEC_SHIM = (
    "import json,os,resource,sys\n"
    "for n,v in json.loads(sys.argv[1]).items():\n"
    "    r=getattr(resource,n,None)\n"
    "    if r is None: continue\n"
    "    soft,hard=(v,v) if n!='RLIMIT_CPU' else (v,v+1)\n"
    "    try: resource.setrlimit(r,(soft,hard))\n"
    "    except (ValueError,OSError): pass\n"
    "try: os.execvp(sys.argv[2],sys.argv[2:])\n"
    "except OSError as e:\n"
    f"    sys.stderr.write('{_START_FAILED}%s: %s\\n'%(sys.argv[2],e)); sys.exit(127)\n"
)


@dataclass
class SandboxResult:
    """What `run_sandboxed` saw.  ``returncode`` is None after a timeout (negative: killed by that signal)."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_overflow: bool = False
    seconds: float = 0.0

    @property
    def start_failed(self) -> bool:
        """The command could not be started at all (no such file, not executable): no verdict on its input."""
        return self.returncode == 127 and self.stderr.startswith(_START_FAILED.encode())

    @property
    def start_error(self) -> str:
        """"could not run CMD: why" when `start_failed`, else ""."""
        if not self.start_failed:
            return ""
        return decode_output(self.stderr).strip().removeprefix(_SHIM_TAG)


class Compiled(NamedTuple):
    """Outcome of `compile_program`: built or not, the compiler's text (or why it failed), seconds taken."""

    ok: bool
    message: str
    seconds: float


def decode_output(data: bytes) -> str:
    """Program output as text (undecodable bytes replaced, never an error)."""
    return data.decode("utf-8", errors="replace")


def clip_text(text: str, limit: int = MAX_KEPT_TEXT) -> str:
    """At most ``limit`` characters of ``text``, saying how many were left out."""
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters]"


def scrubbed_env(tmpdir: str, *, nvcc: str | None = None, cuda: bool = False) -> dict[str, str]:
    """Only what a compiler/program needs; nothing else (tokens, keys...) is inherited.

    ``nvcc``: put its directory first on PATH and keep the CUDA variables; ``cuda``: keep the CUDA variables
    (``CUDA_VISIBLE_DEVICES``, ``LD_LIBRARY_PATH``) for a CUDA binary.
    """
    path = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    if nvcc:
        path = str(Path(nvcc).resolve().parent) + os.pathsep + str(Path(nvcc).parent) + os.pathsep + path
    env = {"PATH": path, "HOME": tmpdir, "TMPDIR": tmpdir, "LANG": os.environ.get("LANG", "C.UTF-8")}
    if cuda or nvcc:
        for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def compiler_rlimits(timeout_s: float) -> dict[str, int]:
    """Limits for a compiler run: 8 GiB of address space, CPU time a little over the timeout."""
    return {"RLIMIT_CORE": 0, "RLIMIT_CPU": int(timeout_s) + 5, "RLIMIT_AS": RLIMIT_AS_COMPILER,
            "RLIMIT_FSIZE": 512 << 20, "RLIMIT_NOFILE": 1024}


def run_rlimits(timeout_s: float, *, cuda: bool) -> dict[str, int]:
    """Limits for running a built program (no address-space limit for CUDA binaries: see the module docstring)."""
    limits = {"RLIMIT_CORE": 0, "RLIMIT_CPU": int(timeout_s) + 5, "RLIMIT_FSIZE": 16 << 20,
              "RLIMIT_NOFILE": 1024 if cuda else 256}
    if not cuda:
        limits["RLIMIT_AS"] = RLIMIT_AS_CPU_RUN
    return limits


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (started with ``start_new_session``); a group already gone is fine."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group has exited already (PermissionError: macOS says so for a group of zombies)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass  # exited between the two calls


def _read_capped(proc: subprocess.Popen, caps: dict, deadline: float,
                 kill_on_overflow: bool) -> tuple[dict, bool, bool]:
    """Read stdout and stderr until both close, the deadline passes, or (``kill_on_overflow``) stdout overflows."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    timed_out = overflow = False
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(remaining, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                room = caps[key.fileobj] - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(chunk) > room and key.fileobj is proc.stdout:
                    overflow = True
            if overflow and kill_on_overflow:
                break
    return bufs, timed_out, overflow


def run_sandboxed(cmd: Sequence[str], *, cwd: str, env: Mapping[str, str], timeout_s: float,
                  rlimits: Mapping[str, int] | None = None, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                  kill_on_overflow: bool = False, max_stderr_bytes: int = MAX_STDERR_BYTES) -> SandboxResult:
    """Run ``cmd`` under the exec shim in its own session, in ``cwd`` with exactly ``env``.

    Reads at most ``max_output_bytes`` of stdout (kills the program past it when ``kill_on_overflow``) and at
    most ``max_stderr_bytes`` of stderr; kills the process group at the deadline and always on return.
    """
    argv = [sys.executable, "-I", "-S", "-c", EXEC_SHIM, json.dumps(dict(rlimits or {})), *cmd]
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except OSError as exc:
        return SandboxResult(127, b"", f"{_START_FAILED}{cmd[0]}: {exc}".encode(), seconds=0.0)
    caps = {proc.stdout: max_output_bytes, proc.stderr: max_stderr_bytes}
    try:
        bufs, timed_out, overflow = _read_capped(proc, caps, deadline, kill_on_overflow)
        if not timed_out and not (overflow and kill_on_overflow):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        kill_process_group(proc)  # also reaps grandchildren left in the group
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
    return SandboxResult(None if timed_out else proc.returncode, bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]),
                         timed_out=timed_out, output_overflow=overflow, seconds=time.monotonic() - start)


def describe_exit(result: SandboxResult) -> str:
    """Why a run ended, in words: the output limit, a signal by name, or the exit status."""
    if result.output_overflow:
        return "output limit exceeded (the program was killed)"
    rc = result.returncode
    if rc is not None and rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def compile_program(compiler_cmd: list[str], workdir: str, timeout_s: float, nvcc: str | None = None, *,
                    binary: str = "prog") -> Compiled:
    """Run a compiler command in ``workdir`` under compiler limits; ok when it exits 0 and ``binary`` exists.

    ``nvcc``: the nvcc in use (its directory goes first on PATH, see `scrubbed_env`).  The message is the
    compiler's output (clipped), or why it failed to run.
    """
    result = run_sandboxed(compiler_cmd, cwd=workdir, env=scrubbed_env(workdir, nvcc=nvcc), timeout_s=timeout_s,
                           rlimits=compiler_rlimits(timeout_s), max_output_bytes=MAX_STDERR_BYTES)
    text = (decode_output(result.stderr) + decode_output(result.stdout)).strip()
    if result.timed_out:
        return Compiled(False, f"compiler timed out after {timeout_s:g} s", result.seconds)
    if result.returncode != 0 or not (Path(workdir) / binary).exists():
        return Compiled(False, clip_text(text or describe_exit(result)), result.seconds)
    return Compiled(True, text, result.seconds)
