"""`mot-daemon translate`: translate every function of C/C++ files into `.cu` files, for scripts and CI.

What a run guarantees:
- Each output is written whole or not at all (temp file in the same folder, fsync, rename), so a run killed at
  any moment leaves no partial `.cu` file; stale temp files of dead runs are removed by the next run.
- Each `.cu` file starts with a `// mot-cuda: {...}` line recording the source's sha256 and how many functions
  failed. `--resume` skips an output only when that line says it is complete for the current source text, so an
  edited source or a file with failed functions is translated again.
- A function that fails (too long, timeout, ...) is reported (summary, `--report`) and the run goes on; the run
  stops early only when no daemon is left to talk to.
- Work is spread over every `--endpoint` that answers; an endpoint that dies mid-run hands its work back to the
  others. If none answers, an engine is started in this process for the run (and the run says so).

Functions are found with tree-sitter-cpp (kernelcheck.parsing.find_functions, shared with the language
server); a function nested in another (a method of a local class) is translated as part of its outer function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol as P
from .client import DaemonAuthError, DaemonClient, DaemonError, DaemonUnavailable, Overloaded
from .endpoints import pid_alive as _pid_alive

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp")
HEADER_PREFIX = "// mot-cuda: "
OUTPUT_FORMAT = 1
TMP_MARKER = ".mot-tmp-"
_TMP_RE = re.compile(r"^\..+\.mot-tmp-(\d+)-[A-Za-z0-9_]+$")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3


class BatchUsageError(ValueError):
    """Bad paths or options; the message says which."""


@dataclass
class BatchOptions:
    paths: list[str]
    out_dir: str
    endpoints: list[str | None] = field(default_factory=lambda: [None])
    report: str | None = None
    resume: bool = False
    mode: str = "fast"
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    timeout_s: float | None = None  # per function, on the daemon
    jobs: int | None = None  # concurrent requests per daemon; None: the daemon's batch size
    connect_timeout_s: float = 3.0
    client_timeout_s: float = 60.0
    ready_timeout_s: float = 600.0
    embedded: bool = True
    preset: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 16
    max_overloaded_retries: int = 100
    progress: bool = True
    curve: Any = None  # endpoints.CurveClientKeys for daemons that require CURVE


# ---------------------------------------------------------------------------------------------- planning


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
    status: str = "pending"  # ok | failed | skipped | not_done

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
    from kernelcheck.parsing import find_functions  # tree-sitter loads at the first file, not at import

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



def render_output(sf: SourceFile, opts: BatchOptions, model_info: dict) -> str:
    failed = sum(1 for j in sf.jobs if j.status != "ok")
    meta = {
        "format": OUTPUT_FORMAT, "source": sf.rel.as_posix(), "source_sha256": sf.sha256, "functions": len(sf.jobs),
        "failed": failed, "complete": failed == 0, "mode": opts.mode, "preset": model_info.get("preset"),
        "checkpoint": model_info.get("checkpoint"),
    }
    lines = [
        HEADER_PREFIX + json.dumps(meta, sort_keys=True),
        f"// Translated from {sf.rel.as_posix()} by mot-cuda (`mot-daemon translate`); regenerated on each run.",
        "",
    ]
    for job in sf.jobs:
        name = job.span.name or "<unnamed>"
        if job.status == "ok":
            r = job.result
            lines.append(f"// ---- {name} ({job.location}): expert {r.primary_expert_name}, {r.num_generated_tokens} tokens")
            lines.append(r.text.rstrip("\n"))
        else:
            err = job.error or {"code": "not_done", "message": "not translated"}
            message = " ".join(str(err.get("message", "")).split())
            lines.append(f"// ---- {name} ({job.location}): FAILED ({err.get('code')}): {message}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run


class _Endpoint:
    def __init__(self, name: str, client, status: P.StatusResult):
        self.name = name
        self.client = client
        self.status = status
        self.alive = True


class BatchRun:
    """One invocation of `mot-daemon translate` (see module docstring). `run()` returns the exit code."""

    def __init__(self, opts: BatchOptions, *, console=None, out_console=None):
        from rich.console import Console

        self.opts = opts
        # soft_wrap: messages are never broken into lines (scripts grep them); only the table is laid out
        self.err = console or Console(stderr=True, soft_wrap=True)
        self.out = out_console or Console(soft_wrap=True)
        self.files: list[SourceFile] = []
        self.jobs: list[FunctionJob] = []
        self.endpoints: list[_Endpoint] = []
        self._hub = None
        self._work: queue.Queue[FunctionJob] = queue.Queue()
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._abort_reason: str | None = None
        self._report_file = None
        self.tokens = 0
        self.done_functions = 0
        self.done_files = 0
        self.t_start = time.monotonic()
        self.model_info: dict = {}

    # --- planning
    def plan(self) -> None:
        opts = self.opts
        out_dir = Path(opts.out_dir).expanduser().resolve()
        base, paths = collect_sources(opts.paths)
        outs = output_paths(paths, base, out_dir)
        for removed in remove_stale_temp_files(out_dir):
            self.err.print(f"removed {removed} (left by a run that was killed)")
        for path in paths:
            sf = SourceFile(path=path, rel=path.relative_to(base), out=outs[path])
            self.files.append(sf)
            try:
                raw = path.read_bytes()
                sf.text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                sf.status, sf.error = "unreadable", f"{type(e).__name__}: {e}"
                continue
            sf.sha256 = hashlib.sha256(raw).hexdigest()
            sf.functions = top_level_functions(sf.text)
            sf.jobs = [FunctionJob(sf, i, span) for i, span in enumerate(sf.functions)]
            if not sf.functions:
                sf.status = "no_functions"
            elif opts.resume and output_is_complete(sf.out, sf.sha256):
                sf.status = "skipped"
                for job in sf.jobs:
                    job.status = "skipped"
            else:
                sf.remaining = len(sf.jobs)
                self.jobs.extend(sf.jobs)

    # --- daemons
    def connect(self) -> None:
        opts = self.opts
        seen = set()
        for ep in opts.endpoints:
            key = ep or "<default>"
            if key in seen:
                continue
            seen.add(key)
            try:
                client = DaemonClient(ep, timeout_s=opts.connect_timeout_s, curve=opts.curve)
            except ValueError as e:
                raise BatchUsageError(str(e)) from e
            try:
                path = client.endpoint.ipc_path
                if path is not None and not path.exists():
                    raise DaemonUnavailable(f"no mot-daemon answers at {client.endpoint.address} (no socket file)")
                status = client.status()
                if status.state != "ready":
                    self.err.print(f"waiting for the daemon at {client.endpoint} to load its model ({status.state})...")
                    client.timeout_s = opts.client_timeout_s
                    status = client.wait_until_ready(opts.ready_timeout_s)
            except DaemonAuthError:
                client.close()
                raise
            except DaemonUnavailable as e:
                client.close()
                self.err.print(str(e), markup=False, highlight=False)
                continue
            self._check_model(client.endpoint.address, status)
            client.timeout_s = opts.client_timeout_s
            self.endpoints.append(_Endpoint(client.endpoint.address, client, status))
        if not self.endpoints:
            if not opts.embedded:
                raise DaemonUnavailable("no daemon answers at " + ", ".join(str(e or "the default endpoint") for e in opts.endpoints))
            self._start_embedded()
        first = self.endpoints[0].status
        self.model_info = {"preset": first.preset, "checkpoint": first.checkpoint}

    def _check_model(self, name: str, status: P.StatusResult) -> None:
        opts = self.opts
        if opts.preset is not None and status.preset != opts.preset:
            raise BatchUsageError(
                f"the daemon at {name} serves preset {status.preset!r}, not {opts.preset!r}; stop it "
                f"(`mot-daemon stop --endpoint {name}`), use another --endpoint, or drop --preset"
            )
        if opts.checkpoint is not None and status.checkpoint != str(opts.checkpoint):
            raise BatchUsageError(
                f"the daemon at {name} serves checkpoint {status.checkpoint!r}, not {opts.checkpoint!r}; reload it "
                "(DaemonClient.reload) or drop --checkpoint"
            )

    def _start_embedded(self) -> None:
        from .client import InProcessEngine
        from .engine import EngineConfig

        opts = self.opts
        where = ", ".join(str(e or "the default endpoint") for e in opts.endpoints)
        self.err.print(
            f"mot-daemon: no daemon answers at {where}; starting an embedded engine in this process for this run "
            f"(preset {opts.preset or 'default'}, device {opts.device or 'auto'}). Start `mot-daemon serve` to keep "
            "the model loaded between runs.", markup=False, highlight=False,
        )
        config = EngineConfig(
            preset=opts.preset, checkpoint=opts.checkpoint, device=opts.device, dtype=opts.dtype,
            max_batch_size=opts.max_batch_size, max_new_tokens=max(4096, opts.max_new_tokens),
        )
        self._hub = InProcessEngine(config)
        client = self._hub.client(timeout_s=opts.client_timeout_s)
        status = client.wait_until_ready(opts.ready_timeout_s)
        self.endpoints.append(_Endpoint("embedded", client, status))

    # --- working
    def _worker(self, ep: _Endpoint) -> None:
        opts = self.opts
        while not self._abort.is_set() and ep.alive:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                return
            job.attempts += 1
            last = [0]

            def on_partial(part: P.Partial, last=last) -> None:
                with self._lock:
                    self.tokens += part.num_generated_tokens - last[0]
                last[0] = part.num_generated_tokens

            try:
                result = ep.client.translate(
                    job.span.text, on_partial=on_partial, mode=opts.mode, max_new_tokens=opts.max_new_tokens,
                    temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed, timeout_s=opts.timeout_s,
                )
            except Overloaded as e:  # another user's burst: not this function's fault, retry after a pause
                if job.attempts >= opts.max_overloaded_retries:
                    self._finish(job, error={"code": e.code, "message": e.message}, endpoint=ep.name)
                else:
                    self._work.put(job)
                    time.sleep(min(5.0, 0.1 * job.attempts))
                continue
            except DaemonError as e:
                self._finish(job, error={"code": e.code, "message": e.message}, endpoint=ep.name)
                continue
            except DaemonUnavailable as e:
                self._endpoint_lost(ep, job, e)
                return
            except Exception as e:  # a bug on our side; report it with the function rather than hang the run
                log.exception("translating %s failed", job.location)
                self._finish(job, error={"code": "client_error", "message": f"{type(e).__name__}: {e}"}, endpoint=ep.name)
                continue
            with self._lock:
                self.tokens += result.num_generated_tokens - last[0]
            self._finish(job, result=result, endpoint=ep.name)

    def _endpoint_lost(self, ep: _Endpoint, job: FunctionJob, error: Exception) -> None:
        with self._lock:
            was_alive, ep.alive = ep.alive, False
            alive = [e for e in self.endpoints if e.alive]
        self._work.put(job)  # not this function's fault: someone else takes it
        if was_alive:
            self.err.print(f"lost {ep.name}: {error}", markup=False, highlight=False)
        if not alive:
            self._abort_reason = f"no daemon is left to translate with (last error: {error})"
            self._abort.set()

    def _finish(self, job: FunctionJob, *, result=None, error=None, endpoint=None) -> None:
        job.result, job.error, job.endpoint = result, error, endpoint
        job.status = "ok" if result is not None else "failed"
        sf = job.file
        with self._lock:
            self.done_functions += 1
            sf.remaining -= 1
            file_done = sf.remaining == 0
        self._write_report_line(job)
        if file_done:
            try:
                write_atomic(sf.out, render_output(sf, self.opts, self.model_info))
                sf.status = "written"
            except OSError as e:
                sf.status, sf.error = "unwritable", f"{type(e).__name__}: {e}"
                self.err.print(f"cannot write {sf.out}: {e}", markup=False, highlight=False)
            with self._lock:
                self.done_files += 1

    def _write_report_line(self, job: FunctionJob) -> None:
        if self._report_file is None:
            return
        span, r = job.span, job.result
        line: dict[str, Any] = {
            "file": job.file.rel.as_posix(), "output": str(job.file.out), "function": span.name,
            "location": job.location, "start_line": span.start_line + 1, "start_col": span.start_col + 1,
            "end_line": span.end_line + 1, "end_col": span.end_col + 1, "status": job.status, "error": job.error,
            "endpoint": job.endpoint, "attempts": job.attempts,
        }
        if r is not None:
            line.update(
                routing={
                    "primary_expert": r.primary_expert, "primary_expert_name": r.primary_expert_name,
                    "active_experts": r.active_experts, "expert_names": r.expert_names, "probs": r.routing_probs,
                },
                num_prompt_tokens=r.num_prompt_tokens, num_generated_tokens=r.num_generated_tokens,
                finish_reason=r.finish_reason, timings=r.timings,
            )
        else:
            line.update(routing=None, num_prompt_tokens=None, num_generated_tokens=None, finish_reason=None, timings=None)
        with self._lock:
            self._report_file.write(json.dumps(line) + "\n")
            self._report_file.flush()

    def run(self) -> int:
        opts = self.opts
        try:
            self.plan()
        except BatchUsageError as e:
            self.err.print(f"mot-daemon translate: {e}", markup=False, highlight=False)
            return EXIT_USAGE
        if opts.report:
            Path(opts.report).parent.mkdir(parents=True, exist_ok=True)
            self._report_file = open(opts.report, "w", encoding="utf-8")
        try:
            for sf in self.files:
                if sf.status == "skipped":
                    for job in sf.jobs:
                        self._write_report_line(job)
            if self.jobs:
                try:
                    self.connect()
                except BatchUsageError as e:
                    self.err.print(f"mot-daemon translate: {e}", markup=False, highlight=False)
                    return EXIT_USAGE
                except DaemonUnavailable as e:
                    self.err.print(f"mot-daemon translate: {e}", markup=False, highlight=False)
                    self._mark_not_done()
                    self._summary()
                    return EXIT_ABORTED
                self._translate_all()
            self._mark_not_done()
            self._summary()
        finally:
            if self._report_file is not None:
                self._report_file.close()
            for ep in self.endpoints:
                ep.client.close()
            if self._hub is not None:
                self._hub.close()
        if self._abort.is_set():
            return EXIT_ABORTED
        failed = any(j.status == "failed" for j in self.jobs) or any(sf.status in ("unreadable", "unwritable") for sf in self.files)
        return EXIT_FAILURES if failed else EXIT_OK

    def _translate_all(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        for job in self.jobs:
            self._work.put(job)
        threads = []
        for ep in self.endpoints:
            n = self.opts.jobs or ep.status.max_batch_size
            for i in range(max(1, n)):
                t = threading.Thread(target=self._worker, args=(ep,), name=f"translate-{ep.name}-{i}", daemon=True)
                threads.append(t)
        n_files = sum(1 for sf in self.files if sf.remaining)
        progress = Progress(
            TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.err, disable=not self.opts.progress,
        )
        with progress:
            files_task = progress.add_task("files", total=n_files, extra="")
            funcs_task = progress.add_task("functions", total=len(self.jobs), extra="")
            t0 = time.monotonic()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                self._abort.wait(0.25)
                elapsed = max(1e-6, time.monotonic() - t0)
                with self._lock:
                    tokens, done_f, done_files = self.tokens, self.done_functions, self.done_files
                progress.update(files_task, completed=done_files)
                progress.update(funcs_task, completed=done_f, extra=f"{tokens / elapsed:7.1f} tok/s")
                if self._abort.is_set():
                    break
            for t in threads:
                t.join(0.1 if self._abort.is_set() else None)
        self.t_translate = time.monotonic() - t0

    def _mark_not_done(self) -> None:
        for sf in self.files:
            if sf.remaining > 0 and sf.status == "pending":
                sf.status = "not_done"
                for job in sf.jobs:
                    if job.status == "pending":
                        job.status = "not_done"
                        self._write_report_line(job)

    def _summary(self) -> None:
        from rich.table import Table

        files = self.files
        count = lambda pred: sum(1 for x in files if pred(x))  # noqa: E731
        jobs = [j for sf in files for j in sf.jobs]
        ok = [j for j in jobs if j.status == "ok"]
        failed = [j for j in jobs if j.status == "failed"]
        elapsed = time.monotonic() - self.t_start
        tokens = sum(j.result.num_generated_tokens for j in ok)
        t_translate = getattr(self, "t_translate", elapsed)
        table = Table(title="mot-daemon translate", show_header=True, header_style="bold")
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_row("source files", str(len(files)))
        table.add_row("  written", str(count(lambda f: f.status == "written")))
        table.add_row("  with failed functions", str(count(lambda f: f.status == "written" and any(j.status != "ok" for j in f.jobs))))
        table.add_row("  skipped (--resume, complete)", str(count(lambda f: f.status == "skipped")))
        table.add_row("  no functions", str(count(lambda f: f.status == "no_functions")))
        table.add_row("  unreadable / unwritable", str(count(lambda f: f.status in ("unreadable", "unwritable"))))
        table.add_row("  not done (run stopped)", str(count(lambda f: f.status == "not_done")))
        table.add_row("functions translated", str(len(ok)))
        table.add_row("functions failed", str(len(failed)))
        table.add_row("functions skipped", str(sum(1 for j in jobs if j.status == "skipped")))
        table.add_row("generated tokens", str(tokens))
        table.add_row("tokens/s", f"{tokens / t_translate:.1f}" if t_translate > 0 else "-")
        table.add_row("wall time", f"{elapsed:.1f} s")
        experts: dict[str, int] = {}
        for j in ok:
            experts[j.result.primary_expert_name] = experts.get(j.result.primary_expert_name, 0) + 1
        for name, n in sorted(experts.items()):
            table.add_row(f"primary expert {name}", str(n))
        for ep in self.endpoints:
            table.add_row(f"endpoint {ep.name}", "ok" if ep.alive else "lost")
        self.out.print(table)
        for sf in files:
            if sf.status in ("unreadable", "unwritable"):
                self.out.print(f"{sf.rel.as_posix()}: {sf.status}: {sf.error}", markup=False, highlight=False)
        for j in failed[:50]:
            self.out.print(f"FAILED {j.location} {j.span.name}: {j.error['code']}: {j.error['message']}", markup=False, highlight=False)
        if len(failed) > 50:
            self.out.print(f"... and {len(failed) - 50} more failures (see --report)", markup=False, highlight=False)
        if self._abort.is_set():
            self.out.print(f"STOPPED: {self._abort_reason}. Finished files are complete; rerun with --resume.", markup=False, highlight=False)


def run_batch(opts: BatchOptions, **kwargs) -> int:
    return BatchRun(opts, **kwargs).run()
