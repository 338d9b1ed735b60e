"""`mot-daemon translate` end to end: real daemons as subprocesses, the CLI as a subprocess, kill -9, --resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


from daemon.batch_files import HEADER_PREFIX, TMP_MARKER, read_output_header
from daemon.testing import REPO_ROOT, daemon_env, spawn_daemon
from kernelcheck.extract import STATUSES

TRANSLATED = set(STATUSES)  # a translated function's report status says what came out, never "ok"

EXAMPLES = REPO_ROOT / "examples" / "cpp_project"
TOKENS = "24"


def _make_sources(root: Path) -> dict[str, list[str]]:
    """examples/cpp_project plus generated files: enough work to kill daemons mid-run. -> {relpath: functions}"""
    shutil.copytree(EXAMPLES, root)
    for i in range(16):
        (root / "gen" / f"k{i:02d}.cpp").parent.mkdir(exist_ok=True)
        (root / "gen" / f"k{i:02d}.cpp").write_text(
            f"void axpy{i}(int n, float a, const float* x, float* y) {{\n"
            f"    for (int j = 0; j < n; ++j) y[j] = a * x[j] + y[j] + {i};\n}}\n\n"
            f"float norm{i}(const float* x, int n) {{\n    float s = 0;\n"
            f"    for (int j = 0; j < n; ++j) s += x[j] * x[j] * {i + 1};\n    return s;\n}}\n"
        )
    # last in sorted order: a function far beyond the 2048-token source limit fails alone, the run goes on
    body = "\n".join(f"    acc += v[{k}] * {k * 7919 % 10007} - w[{k}];" for k in range(1500))
    (root / "zz_huge.cpp").write_text(f"float huge(const float* v, const float* w) {{\n    float acc = 0;\n{body}\n    return acc;\n}}\n")
    from daemon.batch_files import top_level_functions

    return {p.relative_to(root).as_posix(): [f.name for f in top_level_functions(p.read_text())]
            for p in sorted(root.rglob("*")) if p.suffix in (".c", ".cc", ".cpp", ".hpp")}


def _cu_path(out: Path, rel: str) -> Path:
    return out / Path(rel).with_suffix(".cu")


def _check_outputs(src: Path, out: Path, functions: dict[str, list[str]], *, complete_only: bool) -> set[str]:
    """Every .cu present is whole and matches its source; no temp files. Returns the sources with outputs."""
    assert not [p for p in out.rglob(f"*{TMP_MARKER}*")], "temp files left behind"
    present = set()
    for rel, names in functions.items():
        cu = _cu_path(out, rel)
        if not cu.exists():
            continue
        present.add(rel)
        meta = read_output_header(cu)
        assert meta is not None, f"{cu} has no valid header line"
        assert meta["source_sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert meta["functions"] == len(names) and meta["source"] == rel
        text = cu.read_text()
        for name in names:
            assert f"// ---- {name} (" in text, (cu, name)
        if complete_only:
            assert meta["complete"] and meta["failed"] == 0, cu
    return present


def _cli(env, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "daemon", "translate", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_usage_errors_exit_2_before_any_model_is_loaded(tmp_path):
    env = daemon_env(tmp_path)
    out = subprocess.run([sys.executable, "-m", "daemon", "translate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no such file or folder" in out.stderr


def test_kill9_during_a_batch_then_resume_leaves_no_missing_partial_or_corrupt_file(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    functions = _make_sources(src)
    n_files = len(functions)
    a = spawn_daemon(tmp_path / "a", args=["--max-batch-size", "4", "--no-verify"])  # one candidate each, as before
    b = spawn_daemon(tmp_path / "b", args=["--max-batch-size", "4", "--no-verify"])
    env = daemon_env(tmp_path / "cli")
    try:
        a.wait_ready(300)
        b.wait_ready(300)
        # 1. Two daemons share the work (one request at a time each, so the run lasts long enough to kill them).
        cli = _cli(env, str(src), "--out", str(out), "--endpoint", a.endpoint, "--endpoint", b.endpoint, "--jobs", "1",
                   "--max-new-tokens", TOKENS, "--report", str(tmp_path / "r1.jsonl"), "--no-progress")
        deadline = time.monotonic() + 180

        def outputs() -> int:
            return sum(1 for p in out.rglob("*.cu")) if out.exists() else 0

        while outputs() < 3 and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.05)
        assert cli.poll() is None, f"the run ended before the kill:\n{cli.communicate()}"
        a.kill9()  # its work moves to b
        n_at_kill = outputs()
        while outputs() < n_at_kill + 2 and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.05)
        assert cli.poll() is None, f"the run ended before the second kill:\n{cli.communicate()}"
        b.kill9()  # nobody left: the run stops
        stdout, stderr = cli.communicate(timeout=120)
        assert cli.returncode == 3, (stdout, stderr)
        assert "STOPPED: no daemon is left" in stdout and "rerun with --resume" in stdout
        assert f"lost {a.endpoint}" in stderr and f"lost {b.endpoint}" in stderr
        done = _check_outputs(src, out, functions, complete_only=True)
        assert 4 <= len(done) < n_files
        report = [json.loads(line) for line in (tmp_path / "r1.jsonl").read_text().splitlines()]
        assert {r["endpoint"] for r in report if r["status"] in TRANSLATED} == {a.endpoint, b.endpoint}
        assert {r["status"] for r in report} <= TRANSLATED | {"not_done"}

        # 2. --resume with no daemon running: an embedded engine finishes the rest; finished files are skipped.
        mtimes = {rel: _cu_path(out, rel).stat().st_mtime_ns for rel in done}
        resumed = _cli(env, str(src), "--out", str(out), "--resume", "--max-new-tokens", TOKENS, "--preset", "tiny",
                       "--device", "cpu", "--report", str(tmp_path / "r2.jsonl"), "--no-progress")
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 1, (stdout, stderr)  # zz_huge.cpp's function is too long: a reported failure
        assert "starting an embedded engine in this process" in stderr
        assert "FAILED zz_huge.cpp:1:1 huge: too_large:" in stdout and "limit is 2048 tokens" in stdout
        present = _check_outputs(src, out, {k: v for k, v in functions.items() if k != "zz_huge.cpp"}, complete_only=True)
        assert present == set(functions) - {"zz_huge.cpp"}
        assert all(_cu_path(out, rel).stat().st_mtime_ns == m for rel, m in mtimes.items()), "--resume rewrote a finished file"
        huge = read_output_header(_cu_path(out, "zz_huge.cpp"))
        assert huge["failed"] == 1 and huge["complete"] is False
        report = [json.loads(line) for line in (tmp_path / "r2.jsonl").read_text().splitlines()]
        assert len(report) == sum(len(v) for v in functions.values())  # one line per function
        by_status = {}
        for r in report:
            by_status.setdefault(r["status"], set()).add(r["file"])
        assert by_status["skipped"] == done
        assert by_status["failed"] == {"zz_huge.cpp"}
        ok = [r for r in report if r["status"] in TRANSLATED]
        assert ok and all(r["routing"]["primary_expert_name"] in r["routing"]["expert_names"] and r["timings"]["total_s"] > 0
                          and r["num_generated_tokens"] >= 1 and r["location"].startswith(r["file"] + ":") for r in ok)

        # 3. The failed file alone is retried by another --resume (and fails the same way): nothing else is redone.
        again = _cli(env, str(src), "--out", str(out), "--resume", "--max-new-tokens", TOKENS, "--preset", "tiny",
                     "--device", "cpu", "--no-progress", "--report", str(tmp_path / "r3.jsonl"))
        stdout, stderr = again.communicate(timeout=300)
        assert again.returncode == 1
        statuses = [json.loads(line)["status"] for line in (tmp_path / "r3.jsonl").read_text().splitlines()]
        assert statuses.count("failed") == 1 and not TRANSLATED & set(statuses)
    finally:
        a.kill9()
        b.kill9()


def test_outputs_start_with_the_metadata_line():
    assert HEADER_PREFIX == "// mot-cuda: "  # the format scripts grep for; changing it breaks --resume of old runs


def test_outputs_hold_kernels_only_and_say_what_came_out(tmp_path):
    """An embedded run over examples/cpp_project, twice: with experts that write (empty) kernels, each `.cu` holds
    the kernels under their comment and the report says `kernel`; with the tiny preset's random experts nothing
    comes out, so each function's comment says NO KERNEL with the status, and no code is written."""
    from kernel_writers import kernel_writing_checkpoint

    checkpoint = kernel_writing_checkpoint(tmp_path / "writers")
    env = daemon_env(tmp_path / "home")
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES, src)
    # --no-verify: this test is about what comes out; tests/test_daemon_verification.py checks the kernels
    runs = {"writers": ["--checkpoint", str(checkpoint), "--no-verify"], "random": ["--preset", "tiny", "--no-verify"]}
    for name, model in runs.items():
        out, report = tmp_path / f"out-{name}", tmp_path / f"{name}.jsonl"
        cli = _cli(env, str(src), "--out", str(out), *model, "--device", "cpu", "--max-new-tokens", TOKENS,
                   "--report", str(report), "--no-progress")
        stdout, stderr = cli.communicate(timeout=300)
        assert cli.returncode == 0, (stdout, stderr)
        lines = [json.loads(line) for line in report.read_text().splitlines()]
        saxpy = (out / "src" / "saxpy.cu").read_text()
        if name == "writers":
            assert {r["status"] for r in lines} == {"kernel"}
            assert "// ---- saxpy (src/saxpy.cpp:2:1): kernel; expert tiny-" in saxpy
            assert "__global__ void saxpy_kernel(int n, float a, const float* x, float* y) {\n}\n" in saxpy
            assert "### " not in saxpy and "void saxpy(int n" not in saxpy  # no echo, no marker
        else:
            assert {r["status"] for r in lines} <= {"no_kernel", "truncated"}
            code = [line for line in saxpy.splitlines() if line.strip() and not line.startswith("//")]
            assert code == []  # only comments: no code passed off as CUDA
            assert "// ---- saxpy (src/saxpy.cpp:2:1): NO KERNEL (" in saxpy
        assert "kernel" in stdout and read_output_header(out / "src" / "saxpy.cu")["kernels"] == \
            (2 if name == "writers" else 0)
