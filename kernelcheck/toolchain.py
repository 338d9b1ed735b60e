"""The C/C++ and CUDA toolchain: one finder for nvcc and g++ (with their versions), GPU detection, -arch choice.

nvcc is looked for, never assumed.  `find_nvcc` searches ``PATH``, then ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``
and `NVCC_FALLBACK_DIRS` (``/usr/local/cuda/bin``), in the process environment or an ``env`` mapping; where
there is none, `nvcc_missing_message` is the text users see: where it looked and how to provide one.  A result
without nvcc is "unavailable" — never "failed", never "passed".  `find_gxx` takes the first of ``g++``,
``c++``, ``clang++`` on ``PATH``.

A GPU is detected with ``nvidia-smi -L`` (and its compute capability with ``--query-gpu=compute_cap``) or,
without nvidia-smi, a tiny CUDA probe built and run in the sandbox.  ``CUDA_VISIBLE_DEVICES`` set to ``""`` or
``-1`` means no GPU.  ``-arch=sm_XY`` of the GPU is used only where ``nvcc --list-gpu-arch`` lists it (else
nvcc's default target).  `detect_toolchain` caches its `Toolchain` per explicit paths and environment
(``PATH``, ``CUDA_HOME``, ``CUDA_PATH``, ``CUDA_VISIBLE_DEVICES``); ``refresh=True`` looks again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .sandbox import (
    DEFAULT_COMPILE_TIMEOUT_S,
    clip_text,
    compiler_rlimits,
    decode_output,
    run_rlimits,
    run_sandboxed,
    scrubbed_env,
)

__all__ = [
    "NVCC_FALLBACK_DIRS",
    "RUN_STAGE_RAN",
    "RUN_STAGE_NO_GPU",
    "RUN_STAGE_NO_NVCC",
    "Toolchain",
    "find_nvcc",
    "find_gxx",
    "nvcc_missing_message",
    "nvcc_version",
    "gxx_version",
    "detect_gpu",
    "supported_arch",
    "detect_toolchain",
]

# Searched after PATH and $CUDA_HOME/bin / $CUDA_PATH/bin; a module constant so tests can empty it.
NVCC_FALLBACK_DIRS: tuple[str, ...] = ("/usr/local/cuda/bin",)

RUN_STAGE_RAN = "ran"
RUN_STAGE_NO_GPU = "skipped (no GPU)"
RUN_STAGE_NO_NVCC = "unavailable (no nvcc)"

_VERSION_TIMEOUT_S = 30


# --------------------------------------------------------------------------------------------------------------
# Compilers
# --------------------------------------------------------------------------------------------------------------
def _nvcc_candidates(env: Mapping[str, str]) -> list[Path]:
    candidates = [Path(env[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if env.get(v)]
    candidates.extend(Path(directory) / "nvcc" for directory in NVCC_FALLBACK_DIRS)
    return candidates


def find_nvcc(env: Mapping[str, str] | None = None) -> str | None:
    """Path of an executable nvcc: on PATH, else in $CUDA_HOME/bin, $CUDA_PATH/bin, then `NVCC_FALLBACK_DIRS`
    (/usr/local/cuda/bin).  ``env``: the environment to search (default: this process's).  None when there is
    none; `nvcc_missing_message` then says so."""
    env = os.environ if env is None else env
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found
    for candidate in _nvcc_candidates(env):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def nvcc_missing_message(env: Mapping[str, str] | None = None) -> str:
    """Why there is no nvcc: where it was looked for and how to provide it (the text users see)."""
    env = os.environ if env is None else env
    looked = ["PATH"] + [str(candidate.parent) for candidate in _nvcc_candidates(env)]
    unset = [f"${v}" for v in ("CUDA_HOME", "CUDA_PATH") if not env.get(v)]
    unset_note = f" ({' and '.join(unset)} unset)" if unset else ""
    return (
        f"nvcc not found (looked on {', '.join(looked)}{unset_note}); install the CUDA toolkit or set CUDA_HOME "
        "to enable CUDA compile checks and builds"
    )


def find_gxx(env: Mapping[str, str] | None = None) -> str | None:
    """The first of g++, c++, clang++ on PATH (of ``env``, default this process's), or None."""
    env = os.environ if env is None else env
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return found
    return None


def _version_output(tool: str) -> tuple[str, str]:
    """(``tool --version`` output, "") or ("", why it could not be read)."""
    try:
        proc = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=_VERSION_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return "", f"{tool} --version failed: {exc}"
    if proc.returncode != 0:
        return "", f"{tool} --version exited with status {proc.returncode}"
    return proc.stdout, ""


def nvcc_version(nvcc: str) -> str:
    """nvcc's version ("13.0.88", from "Cuda compilation tools, release 13.0, V13.0.88"), or "unknown (why)"."""
    text, why = _version_output(nvcc)
    match = re.search(r"\bV(\d+(?:\.\d+)+)", text) or re.search(r"release (\d+(?:\.\d+)*)", text)
    if match:
        return match.group(1)
    return f"unknown ({why or 'no version in its --version output'})"


def gxx_version(gxx: str) -> str:
    """The first line of ``g++ --version`` (e.g. "g++ (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0"), or "unknown (why)"."""
    text, why = _version_output(gxx)
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return first or f"unknown ({why or 'empty --version output'})"


# --------------------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------------------
_PROBE_SOURCE = r"""
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) { std::printf("no GPU: %s\n", cudaGetErrorString(e)); return 1; }
    cudaDeviceProp p;
    if (n < 1 || cudaGetDeviceProperties(&p, 0) != cudaSuccess) { std::printf("no GPU: 0 devices\n"); return 1; }
    std::printf("%d.%d %s\n", p.major, p.minor, p.name);
    return 0;
}
"""


def _gpu_via_nvidia_smi() -> tuple[bool | None, str, str | None]:
    """(found, what was seen, compute capability "X.Y" or None); found is None without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, "nvidia-smi not found", None
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"nvidia-smi -L failed: {exc}", None
    gpus = [ln for ln in listing.stdout.splitlines() if ln.startswith("GPU ")]
    if listing.returncode != 0 or not gpus:
        msg = (listing.stdout + listing.stderr).strip().splitlines()
        return False, "nvidia-smi -L: " + (msg[0] if msg else f"exit {listing.returncode}, no GPU"), None
    cap = None
    try:
        q = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        first = q.stdout.strip().splitlines()[0].strip() if q.returncode == 0 and q.stdout.strip() else ""
        if re.fullmatch(r"\d+\.\d+", first):
            cap = first
    except (OSError, subprocess.SubprocessError, IndexError):
        pass  # old nvidia-smi without compute_cap: no -arch flag, nvcc's default target (the Toolchain shows arch None)
    return True, gpus[0], cap


def _gpu_via_probe(nvcc: str) -> tuple[bool, str, str | None]:
    """Build and run `_PROBE_SOURCE` in the sandbox: (found, what it printed, compute capability or None)."""
    with tempfile.TemporaryDirectory(prefix="mot-func-probe-") as tmp:
        (Path(tmp) / "probe.cu").write_text(_PROBE_SOURCE)
        build = run_sandboxed([nvcc, "-o", "probe", "probe.cu"], cwd=tmp, env=scrubbed_env(tmp, nvcc=nvcc),
                              timeout_s=DEFAULT_COMPILE_TIMEOUT_S, rlimits=compiler_rlimits(300))
        if build.returncode != 0:
            return False, "CUDA probe did not build: " + clip_text(decode_output(build.stderr), 300), None
        run = run_sandboxed(["./probe"], cwd=tmp, env=scrubbed_env(tmp, cuda=True), timeout_s=60,
                            rlimits=run_rlimits(60, cuda=True))
        out = decode_output(run.stdout).strip()
        if run.returncode == 0 and re.match(r"\d+\.\d+ ", out):
            cap, name = out.split(" ", 1)
            return True, f"CUDA probe: {name}", cap
        return False, "CUDA probe: " + (out or decode_output(run.stderr).strip() or f"exit {run.returncode}"), None


def detect_gpu(nvcc: str | None) -> tuple[bool, str, str | None]:
    """(a GPU is usable, what was seen, its compute capability "X.Y" or None).

    ``CUDA_VISIBLE_DEVICES`` = "" or "-1" hides every GPU; else nvidia-smi, else (with ``nvcc``) the CUDA probe.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU", None
    found, info, cap = _gpu_via_nvidia_smi()
    if found is not None:
        return found, info, cap
    if nvcc:
        return _gpu_via_probe(nvcc)
    return False, info + "; no nvcc for a CUDA probe", None


def supported_arch(nvcc: str, cap: str | None) -> str | None:
    """``sm_XY`` for compute capability "X.Y" when ``nvcc --list-gpu-arch`` lists it, else None (nvcc's default
    target; also when the listing cannot be read)."""
    if not cap:
        return None
    arch = "sm_" + cap.replace(".", "")
    try:
        listing = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None  # an nvcc that cannot list its targets builds for its default one
    return arch if ("compute_" + cap.replace(".", "")) in listing.stdout.split() else None


# --------------------------------------------------------------------------------------------------------------
# Toolchain
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Toolchain:
    """What is available: g++ for the C++ references, nvcc for the build stage, a GPU for the run stage."""

    gxx: str | None
    nvcc: str | None
    gpu: bool
    gpu_info: str = ""
    arch: str | None = None
    nvcc_version: str = ""
    gxx_version: str = ""

    @property
    def run_stage(self) -> str:
        if not self.nvcc:
            return RUN_STAGE_NO_NVCC
        return RUN_STAGE_RAN if self.gpu else RUN_STAGE_NO_GPU

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"run_stage": self.run_stage}


_TOOLCHAIN_CACHE: dict[tuple, Toolchain] = {}
_TOOLCHAIN_LOCK = threading.Lock()


def _is_executable(path: str) -> bool:
    found = shutil.which(path)
    return bool(found) and os.access(found, os.X_OK)


def detect_toolchain(nvcc: str | None = None, gxx: str | None = None, *, refresh: bool = False) -> Toolchain:
    """Find g++, nvcc (with versions) and a GPU; cached per arguments and environment, ``refresh`` looks again.

    ``nvcc``/``gxx`` given: used when executable, else that tool counts as missing (never another one).
    """
    key = (nvcc, gxx, NVCC_FALLBACK_DIRS) + tuple(
        os.environ.get(name) for name in ("PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES"))
    with _TOOLCHAIN_LOCK:
        if not refresh and key in _TOOLCHAIN_CACHE:
            return _TOOLCHAIN_CACHE[key]
        nvcc_path = find_nvcc() if nvcc is None else (nvcc if _is_executable(nvcc) else None)
        gxx_path = find_gxx() if gxx is None else (gxx if _is_executable(gxx) else None)
        gpu, info, cap = detect_gpu(nvcc_path)
        arch = supported_arch(nvcc_path, cap) if (gpu and nvcc_path) else None
        tc = Toolchain(gxx=gxx_path, nvcc=nvcc_path, gpu=gpu, gpu_info=info, arch=arch,
                       nvcc_version=nvcc_version(nvcc_path) if nvcc_path else "",
                       gxx_version=gxx_version(gxx_path) if gxx_path else "")
        _TOOLCHAIN_CACHE[key] = tc
        return tc
