"""`mot-daemon translate`: translate every function of C/C++ files into `.cu` files, for scripts and CI.

What a run guarantees:
- Each output is written whole or not at all (temp file in the same folder, fsync, rename), so a run killed at
  any moment leaves no partial `.cu` file; stale temp files of dead runs are removed by the next run.
- Each `.cu` file starts with a `// mot-cuda: {...}` line recording the source's sha256 and how many functions
  failed. `--resume` skips an output only when that line says it is complete for the current source text, so an
  edited source or a file with failed functions is translated again.
- A function that fails (too long, timeout, ...) is reported (summary, `--report`) and the run goes on; the run
  stops early only when no daemon is left to talk to.
- Each function's kernel is verified by the daemon where it has a C++ compiler (`--no-verify`: not), choosing among
  `--candidates` candidates; its comment in the `.cu` file, its `--report` line and the summary say what the check
  found (verified on N inputs, the first mismatch, does not compile, not verifiable and why...).
- Work is spread over every `--endpoint` that answers; an endpoint that dies mid-run hands its work back to the
  others. If none answers, an engine is started in this process for the run (and the run says so).

The sources, outputs and their header line are in batch_files.py; the report lines and the summary table in
batch_report.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mot_engine.defaults import CANDIDATES, MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, MODE, TEMPERATURE, TOP_P, VERIFY
from mot_engine.envs import RuntimeConfig

from . import protocol as P
from .batch_files import (
    BatchUsageError,
    FunctionJob,
    SourceFile,
    collect_sources,
    output_is_complete,
    output_paths,
    remove_stale_temp_files,
    render_output,
    top_level_functions,
    write_atomic,
)
from .batch_report import check_lines, problem_lines, report_line, summary_table
from .client import DaemonAuthError, DaemonClient, DaemonError, DaemonUnavailable, Overloaded
from .engine_config import EngineConfig
from .inprocess import InProcessEngine

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3


@dataclass
class BatchOptions:
    paths: list[str]
    out_dir: str
    endpoints: list[str | None] = field(default_factory=lambda: [None])
    report: str | None = None
    resume: bool = False
    mode: str = MODE
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    seed: int | None = None
    candidates: int = CANDIDATES  # per function, where they are verified
    verify: str = VERIFY  # "auto" | "off" (`--no-verify`)
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
    quantization: str | None = None
    max_batch_size: int = 16
    max_overloaded_retries: int = 100
    progress: bool = True
    curve: Any = None  # endpoints.CurveClientKeys for daemons that require CURVE


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
        self.t_translate: float | None = None  # seconds spent translating, once done
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
        opts = self.opts
        where = ", ".join(str(e or "the default endpoint") for e in opts.endpoints)
        self.err.print(
            f"mot-daemon: no daemon answers at {where}; starting an embedded engine in this process for this run "
            f"(preset {opts.preset or 'default'}, device {opts.device or 'auto'}). Start `mot-daemon serve` to keep "
            "the model loaded between runs.", markup=False, highlight=False,
        )
        config = EngineConfig(  # it allows what a daemon allows by default, or what this run asks for if more
            preset=opts.preset, checkpoint=opts.checkpoint, device=opts.device, dtype=opts.dtype,
            quantization=opts.quantization,
            max_batch_size=opts.max_batch_size, max_new_tokens=max(MAX_NEW_TOKENS_LIMIT, opts.max_new_tokens),
            runtime=RuntimeConfig.from_env(),
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
                    candidates=opts.candidates, verify=opts.verify,
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
        job.status = result.status if result is not None else "failed"  # what came out: kernel, no_kernel, ...
        sf = job.file
        with self._lock:
            self.done_functions += 1
            sf.remaining -= 1
            file_done = sf.remaining == 0
        self._write_report_line(job)
        if file_done:
            try:
                write_atomic(sf.out, render_output(sf, self.opts.mode, self.model_info))
                sf.status = "written"
            except OSError as e:
                sf.status, sf.error = "unwritable", f"{type(e).__name__}: {e}"
                self.err.print(f"cannot write {sf.out}: {e}", markup=False, highlight=False)
            with self._lock:
                self.done_files += 1

    def _write_report_line(self, job: FunctionJob) -> None:
        if self._report_file is None:
            return
        line = json.dumps(report_line(job))
        with self._lock:
            self._report_file.write(line + "\n")
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
        endpoints = [(ep.name, ep.alive) for ep in self.endpoints]
        self.out.print(summary_table(self.files, endpoints, t_start=self.t_start,
                                     t_translate=self.t_translate))
        for line in check_lines(self.files) + problem_lines(self.files):
            self.out.print(line, markup=False, highlight=False)
        if self._abort.is_set():
            self.out.print(f"STOPPED: {self._abort_reason}. Finished files are complete; rerun with --resume.",
                           markup=False, highlight=False)


def run_batch(opts: BatchOptions, **kwargs) -> int:
    return BatchRun(opts, **kwargs).run()