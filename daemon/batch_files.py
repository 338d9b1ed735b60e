"""The files of `mot-daemon translate`: which sources a run translates and where each `.cu` output goes, the
functions found in a source, and outputs written whole or not at all, each opening with a `// mot-cuda: {...}`
line that records the source's sha256 and how many functions failed (what `--resume` trusts).

Functions are found with tree-sitter-cpp (kernelcheck.parsing.find_functions, shared with the language
server); a function nested in another (a method of a local class) is translated as part of its outer function.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelcheck.candidates import describe_check
from kernelcheck.extract import KERNEL, describe

from . import protocol as P
from .endpoints import pid_alive as _pid_alive

SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp")
HEADER_PREFIX = "// mot-cuda: "
OUTPUT_FORMAT = 1
TMP_MARKER = ".mot-tmp-"
_TMP_RE = re.compile(r"^\..+\.mot-tmp-(\d+)-[A-Za-z0-9_]+$")


class BatchUsageError(ValueError):
    """Bad paths or options; the message says which."""


@dataclass
class SourceFile:
    path: Path
    rel: Path
    out: Path
    text: str = ""
    sha256: str = ""
    functions: list = field(default_factory=list)  # FunctionSpan
    status: str = "pending"  # pending | skipped | no_functions | unreadable | written | not_done
    error: str | None = None
    jobs: list["FunctionJob"] = field(default_factory=list)
    remaining: int = 0


@dataclass
class FunctionJob:
    file: SourceFile
    index: int
    span: Any  # FunctionSpan
    result: P.TranslateResult | None = None
    error: dict | None = None
    endpoint: str | None = None
    attempts: int = 0
    status: str = "pending"  # kernel | truncated | no_kernel (what came out) | failed | skipped | not_done

    @property
    def location(self) -> str:
        return f"{self.file.rel.as_posix()}:{self.span.start_line + 1}:{self.span.start_col + 1}"


def collect_sources(paths: list[str]) -> tuple[Path, list[Path]]:
    """(base folder, sorted source files). Folders are searched recursively for SOURCE_SUFFIXES; the base is
    the folder given (one folder) or the common parent of everything given, and outputs mirror paths under it."""
    if not paths:
        raise BatchUsageError("give at least one file or folder to translate")
    files: set[Path] = set()
    anchors: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser().resolve()
        if not p.exists():
            raise BatchUsageError(f"{raw}: no such file or folder")
        if p.is_dir():
            anchors.append(p)
            for f in p.rglob("*"):
                if f.is_file() and f.suffix.lower() in SOURCE_SUFFIXES and not any(part.startswith(".") for part in f.relative_to(p).parts):
                    files.add(f)
        else:
            if p.suffix.lower() not in SOURCE_SUFFIXES:
                raise BatchUsageError(f"{raw}: not a C/C++ source (expected one of {' '.join(SOURCE_SUFFIXES)})")
            anchors.append(p.parent)
            files.add(p)
    base = Path(os.path.commonpath([str(a) for a in anchors]))
    return base, sorted(files)


def output_paths(files: list[Path], base: Path, out_dir: Path) -> dict[Path, Path]:
    """src/a.cpp -> OUT/src/a.cu; when two sources of one folder share a stem (a.h, a.cpp) both keep their
    suffix (a.h.cu, a.cpp.cu) so neither overwrites the other."""
    stems: dict[Path, list[Path]] = {}
    for f in files:
        rel = f.relative_to(base)
        stems.setdefault(rel.with_suffix(""), []).append(f)
    out: dict[Path, Path] = {}
    for stem, group in stems.items():
        for f in group:
            rel = f.relative_to(base)
            out[f] = out_dir / (rel.with_suffix(".cu") if len(group) == 1 else rel.parent / (rel.name + ".cu"))
    return out


def top_level_functions(source: str) -> list:
    """Function definitions not nested inside another one (those are translated with their outer function)."""
    # tree-sitter loads when a run plans its sources, not whenever `mot-daemon` starts
    from kernelcheck.parsing import find_functions

    spans, outer_end = [], -1
    for span in find_functions(source):  # sorted by start, outer first
        if span.start_byte < outer_end:
            continue
        spans.append(span)
        outer_end = span.end_byte
    return spans


def read_output_header(path: Path) -> dict | None:
    """The metadata line of a `.cu` file written by a run, or None (absent, foreign or damaged)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return None
    if not first.startswith(HEADER_PREFIX):
        return None
    try:
        meta = json.loads(first[len(HEADER_PREFIX) :])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def output_is_complete(path: Path, source_sha256: str) -> bool:
    meta = read_output_header(path)
    return bool(
        meta and meta.get("format") == OUTPUT_FORMAT and meta.get("source_sha256") == source_sha256
        and meta.get("complete") is True and meta.get("failed") == 0
    )


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TMP_MARKER}{os.getpid()}-x")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(out_dir: Path) -> list[Path]:
    """Delete temp files left by runs that were killed (their pid is gone). Returns what was removed."""
    removed = []
    if not out_dir.exists():
        return removed
    for f in out_dir.rglob(f".*{TMP_MARKER}*"):
        m = _TMP_RE.match(f.name)
        if not m or not f.is_file():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _check_line(r: P.TranslateResult) -> str:
    """What the check of the delivered kernel found, and which candidate it is."""
    c = r.check
    words = describe_check(c.status, backend=c.backend, inputs=c.inputs, reason=c.reason)
    if len(r.candidates) > 1:
        sampled = "greedy" if r.candidates[r.candidate].temperature == 0 else "sampled"
        words += f" (candidate {r.candidate + 1} of {len(r.candidates)}, {sampled})"
    return words


def render_output(sf: SourceFile, mode: str, model_info: dict) -> str:
    """The `.cu` text of a finished source: the header line, then each function's kernel (or why it failed)."""
    failed = sum(1 for j in sf.jobs if j.result is None)
    meta = {
        "format": OUTPUT_FORMAT, "source": sf.rel.as_posix(), "source_sha256": sf.sha256, "functions": len(sf.jobs),
        "failed": failed, "complete": failed == 0, "kernels": sum(1 for j in sf.jobs if j.status == KERNEL),
        "verified": sum(1 for j in sf.jobs if j.result is not None and j.result.check.status == "verified"),
        "mode": mode, "preset": model_info.get("preset"), "checkpoint": model_info.get("checkpoint"),
    }
    lines = [
        HEADER_PREFIX + json.dumps(meta, sort_keys=True),
        f"// Translated from {sf.rel.as_posix()} by mot-cuda (`mot-daemon translate`); regenerated on each run.",
        "",
    ]
    for job in sf.jobs:
        name = job.span.name or "<unnamed>"
        r = job.result
        if r is not None and r.status == KERNEL:
            lines.append(f"// ---- {name} ({job.location}): kernel; expert {r.primary_expert_name}, "
                         f"{r.num_generated_tokens} tokens{''.join('; ' + n for n in r.notes)}")
            lines.append(f"// check: {_check_line(r)}")
            lines.append(r.kernel.rstrip("\n"))
        elif r is not None:  # the model answered, but not with a kernel: say so, and write no code
            lines.append(f"// ---- {name} ({job.location}): NO KERNEL ({r.status}): {describe(r.status, r.notes)}; expert "
                         f"{r.primary_expert_name}, {r.num_generated_tokens} tokens")
        else:
            err = job.error or {"code": "not_done", "message": "not translated"}
            message = " ".join(str(err.get("message", "")).split())
            lines.append(f"// ---- {name} ({job.location}): FAILED ({err.get('code')}): {message}")
        lines.append("")
    return "\n".join(lines)

