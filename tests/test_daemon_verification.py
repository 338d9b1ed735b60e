"""Where users see verification: the choice among a translation's candidates (pure), the daemon's plan and its
verifier threads, and end to end a real daemon (subprocess, ZeroMQ) serving the kernel-writing tiny experts
(tests/kernel_writers.py: every kernel has an empty body, so a check finds a mismatch), then `mot-daemon translate`
against it: the result's `check` and `candidates`, the `.cu` comment, the `--report` line and the summary."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from daemon import protocol as P
from daemon import replies
from daemon.testing import REPO_ROOT, daemon_env, spawn_daemon
from daemon.translation import Translation
from daemon.verification import Verifier, VerifyPlan
from kernelcheck.candidates import CHECK_STATUSES, RANK, choose, describe_check
from kernelcheck.toolchain import find_gxx
from mot_engine import defaults

SAXPY = "void saxpy(int n, float a, const float* x, float* y) {\n    for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];\n}\n"
SAXPY_KERNEL = "__global__ void saxpy_kernel(int n, float a, const float* x, float* y) {\n}\n"
needs_gxx = pytest.mark.skipif(find_gxx() is None, reason="no C++ compiler (g++): kernels cannot be verified here")


# ---------------------------------------------------------------------------------------------- the choice (pure)


def test_verified_beats_everything_and_the_first_verified_wins():
    for other in CHECK_STATUSES:
        assert choose([other, "verified"]) == (0 if other == "verified" else 1)
    assert choose(["mismatch", "verified", "verified"]) == 1


def test_without_a_verified_candidate_the_furthest_check_wins_the_earliest_among_equals():
    assert choose(["syntax_error", "compile_error", "mismatch", "not_verifiable"]) == 2
    assert choose(["compile_error", "not_verifiable", "syntax_error"]) == 1
    assert choose(["unavailable", "syntax_error"]) == 1  # a check that said something beats no check
    assert choose(["skipped", "unavailable"]) == 1  # a kernel not checked beats no kernel at all
    assert choose(["mismatch", "mismatch"]) == 0 and choose(["skipped", "skipped"]) == 0
    # a verified parallel kernel before a verified serial one (the first among equals otherwise)
    assert choose(["verified", "mismatch", "verified"], [False, True, True]) == 2
    assert choose(["verified", "verified"], [False, False]) == 0
    assert choose(["mismatch", "mismatch"], [False, True]) == 0  # only verified kernels are chosen by shape
    assert [s for s, _ in sorted(RANK.items(), key=lambda kv: -kv[1])] == [
        "verified", "mismatch", "not_verifiable", "compile_error", "syntax_error", "unavailable", "skipped"]
    with pytest.raises(ValueError, match="'probably_fine'"):
        choose(["mismatch", "probably_fine"])
    with pytest.raises(ValueError, match="no candidate"):
        choose([])


def test_a_check_in_words():
    assert describe_check("verified", backend="cpu", inputs=24) == "verified on 24 generated inputs (CPU)"
    assert describe_check("mismatch", reason="y[1]: expected 2, got 0\nmore") == "mismatch: y[1]: expected 2, got 0"
    assert describe_check("compile_error", reason="x" * 500, limit=40) == "does not compile: " + "x" * 21 + "…"
    assert describe_check("skipped", reason="verification is off") == "not checked: verification is off"


def _translation(answers: list[str], plan: VerifyPlan) -> Translation:
    """A translation whose candidates ended with these answers (no model: results as the Generator makes them)."""
    request = P.Translate(id="r", source=SAXPY, options=P.TranslateOptions(candidates=len(answers)))
    t = Translation("client", request, "g1", t_received=time.monotonic(), deadline=time.monotonic() + 60)
    t.start(plan)
    routing = {"primary_expert": 0, "active_experts": [0, 1], "all_expert_probs": [0.6, 0.4]}
    prefix = "__global__ void saxpy_kernel(int n, float a, const float* x, float* y)"
    t.results = [SimpleNamespace(answer=prefix + a, text=a, answer_prefix=prefix, routing=routing, timings={},
                                 num_prompt_tokens=9, num_generated_tokens=len(a), finish_reason="stop")
                 for a in answers]
    return t


def test_the_result_delivers_the_chosen_candidate_with_every_candidates_check():
    t = _translation([" {\n}", "; and no body", " { y[0] = 1; }"], VerifyPlan(check=True, choose=True))
    kernels = t.extract()
    assert len(kernels) == 2  # the candidates with a kernel, in order
    kernel_checks = [P.Verification(status="compile_error", reason="nope"),
                     P.Verification(status="verified", backend="cpu", inputs=7)]
    result = replies.translate_result(t, t.checks(kernel_checks), expert_names=["e0", "e1"])
    assert result.candidate == 2 and result.check.status == "verified" and result.kernel == kernels[1]
    assert [c.check for c in result.candidates] == ["compile_error", "skipped", "verified"]
    assert [c.status for c in result.candidates] == ["kernel", "truncated", "kernel"]  # the head never closed
    assert [(c.index, c.temperature, c.seed) for c in result.candidates] == [
        (0, 0.0, None), (1, defaults.CANDIDATE_TEMPERATURE, 1), (2, defaults.CANDIDATE_TEMPERATURE, 2)]
    assert [c.primary for c in result.candidates] == ["e0"] * 3  # each result's routing names its primary


def test_with_nothing_to_choose_by_one_candidate_and_its_check_says_why():
    t = _translation([" {\n}"], Verifier(enabled=False).plan("auto"))
    assert len(t.samplings) == 1 and t.extract() == []
    result = replies.translate_result(t, t.checks(None), expert_names=["e0", "e1"])
    assert result.check.status == "skipped" and "--no-verify" in result.check.reason
    assert result.status == "kernel" and result.candidate == 0


def test_candidates_sample_with_their_own_seeds_after_the_requests_own_options():
    options = P.TranslateOptions(temperature=0.3, top_p=0.9, seed=40, candidates=3)
    t = Translation("client", P.Translate(id="r", source=SAXPY, options=options), "g1", t_received=0.0, deadline=1.0)
    t.start(VerifyPlan(check=True, choose=True), top_k=1)
    assert [(s.temperature, s.top_p, s.seed) for s in t.samplings] == [
        (0.3, 0.9, 40), (defaults.CANDIDATE_TEMPERATURE, defaults.CANDIDATE_TOP_P, 41),
        (defaults.CANDIDATE_TEMPERATURE, defaults.CANDIDATE_TOP_P, 42)]
    t.start(VerifyPlan(check=True, choose=True), top_k=2)  # a second active expert: its own greedy candidate
    assert [(s.temperature, s.seed, s.primary_rank) for s in t.samplings] == [
        (0.3, 40, 0), (0.3, 40, 1), (defaults.CANDIDATE_TEMPERATURE, 42, 0)]


# ---------------------------------------------------------------------------------------------- the verifier


def test_the_plan_follows_the_request_the_daemon_and_the_compiler(monkeypatch):
    off = Verifier().plan("off")
    assert not off.check and not off.choose and 'verify "off"' in off.reason
    assert not Verifier(enabled=False).plan("auto").check
    monkeypatch.setattr("daemon.verification.find_gxx", lambda: None)
    plan = Verifier().plan("auto")
    assert plan.check and not plan.choose and "no C++ compiler (g++)" in plan.reason
    with pytest.raises(ValueError, match="'sometimes'"):
        Verifier().plan("sometimes")


def test_a_check_that_raises_is_that_requests_unavailable_check(monkeypatch):
    def broken(source, kernels, *, compile_timeout_s):
        raise RuntimeError("the sandbox is on fire")

    monkeypatch.setattr("daemon.verification.check_kernels", broken)
    verifier, got, done = Verifier(workers=1), [], threading.Event()
    verifier.submit("key", SAXPY, [SAXPY_KERNEL, SAXPY_KERNEL], compile_timeout_s=5,
                    done=lambda key, checks: (got.append((key, checks)), done.set()))
    assert done.wait(10)
    (key, checks), = got
    assert key == "key" and [c.status for c in checks] == ["unavailable", "unavailable"]
    assert "RuntimeError: the sandbox is on fire" in checks[0].reason
    verifier.close()


def test_a_check_that_fails_or_runs_out_of_time_is_that_requests_and_the_engine_goes_on(monkeypatch, tmp_path):
    """The real engine (in process, the kernel writers) with stand-ins for the check: one that raises, one slower
    than the budget. Each result still carries its kernel, with an "unavailable" check saying why."""
    from kernel_writers import kernel_writing_checkpoint

    from daemon.engine_config import EngineConfig
    from daemon.inprocess import InProcessEngine

    calls = []

    def stand_in(source, kernels, *, compile_timeout_s):
        calls.append(compile_timeout_s)
        if len(calls) == 1:
            raise RuntimeError("the sandbox is on fire")
        time.sleep(3.0)  # past the budget: the engine answers without it
        return [P.Verification(status="verified", backend="cpu", inputs=1)] * len(kernels)

    monkeypatch.setattr("daemon.verification.check_kernels", stand_in)
    monkeypatch.setattr("daemon.verification.find_gxx", lambda: "/usr/bin/g++")  # a plan that chooses, g++ or not
    checkpoint = kernel_writing_checkpoint(tmp_path / "writers")
    hub = InProcessEngine(EngineConfig(checkpoint=str(checkpoint), device="cpu", verify_timeout_s=0.5))
    try:
        client = hub.client(timeout_s=60)
        client.wait_until_ready(120)
        failed = client.translate(SAXPY, candidates=2)
        assert failed.check.status == "unavailable" and "RuntimeError: the sandbox is on fire" in failed.check.reason
        assert failed.kernel == SAXPY_KERNEL and [c.check for c in failed.candidates] == ["unavailable"] * 2
        t0 = time.monotonic()
        late = client.translate(SAXPY, candidates=2)
        assert time.monotonic() - t0 < 2.5  # answered at the budget, not when the check ends
        assert late.check.status == "unavailable" and late.check.reason == "verification took longer than 0.5 s"
        assert late.kernel == SAXPY_KERNEL and calls[1] <= 1.0  # builds are bounded by the budget too
        status = client.status()
        assert status.state == "ready" and status.verifying == 0 and status.requests_served == 2
    finally:
        hub.close()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def verifying_daemon(tmp_path_factory):
    from kernel_writers import kernel_writing_checkpoint

    root = tmp_path_factory.mktemp("verify")
    checkpoint = kernel_writing_checkpoint(root / "writers")
    proc = spawn_daemon(root / "daemon", preset=None, args=["--checkpoint", str(checkpoint)])
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.terminate()


@pytest.mark.slow
@needs_gxx
def test_a_daemon_verifies_the_candidates_and_delivers_the_furthest(verifying_daemon):
    with verifying_daemon.client(timeout_s=120) as client:
        assert client.status().verification.startswith("on:")
        stream = client.stream_translate(SAXPY, candidates=2)
        seen = []
        stream.on_checking = seen.append
        partials = list(stream)
        result = stream.result
        assert partials and seen == [stream.checking] and seen[0].candidates == 2 and seen[0].kernels == 1
        # both candidates wrote the same empty kernel: one check, a mismatch, said for each
        assert result.status == "kernel" and result.kernel == SAXPY_KERNEL
        assert result.check.status == "mismatch" and result.check.backend in ("cpu", "gpu")
        assert result.check.inputs >= 1 and result.check.mismatch and result.check.mismatch in result.check.reason
        assert [c.index for c in result.candidates] == [0, 1]
        # the router activates two experts: candidate 1 is the other one's greedy kernel
        assert [(c.temperature, c.seed) for c in result.candidates] == [(0.0, None), (0.0, None)]
        assert all(c.primary for c in result.candidates) and len({c.primary for c in result.candidates}) == 2
        assert all(c.check in CHECK_STATUSES and c.status == "kernel" for c in result.candidates)
        assert result.candidate == choose([c.check for c in result.candidates]) == 0
        assert result.candidates[result.candidate].check == result.check.status
        assert result.timings["daemon_verify_s"] > 0

        unchecked = client.translate(SAXPY, candidates=3, verify="off")
        assert unchecked.check.status == "skipped" and len(unchecked.candidates) == 1
        assert unchecked.kernel == SAXPY_KERNEL  # the same kernel, delivered unchecked


@pytest.mark.slow
@needs_gxx
def test_the_batch_cli_says_what_each_check_found(verifying_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "saxpy.cpp").write_text("// one function\n" + SAXPY)
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "daemon", "translate", str(src), "--out", str(out), "--endpoint",
         verifying_daemon.endpoint, "--no-embedded", "--candidates", "2", "--report", str(report), "--no-progress"],
        cwd=REPO_ROOT, env=daemon_env(tmp_path / "home"), capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    (line,) = [json.loads(raw) for raw in report.read_text().splitlines()]
    assert line["status"] == "kernel" and line["check"]["status"] == "mismatch" and line["candidate"] == 0
    assert [c["index"] for c in line["candidates"]] == [0, 1]
    words = line["check"]["summary"]
    assert words.startswith("mismatch: y[") and "on input #" in words
    cu = (out / "saxpy.cu").read_text()
    assert f"// check: {words} (candidate 1 of 2, greedy)\n{SAXPY_KERNEL}" in cu
    assert json.loads(cu.splitlines()[0].split(": ", 1)[1])["verified"] == 0
    assert f"CHECK saxpy.cpp:2:1 saxpy: {words}" in run.stdout
    assert "mismatch" in run.stdout and "kernels checked" in run.stdout
