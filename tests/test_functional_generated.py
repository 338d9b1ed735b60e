"""The functional harness strengthened with generated-input checks (kernelcheck.generated, kernelcheck.side_by_side).

Hand-made cases in the data set's JSON shape, whose own tests are weak the way BabelTower's are (positive values
only; one element): a kernel passes them and the generated check still catches it.  A vacuous reference is reported
as vacuous; a kernel the CPU backend cannot run is not verifiable and data+generated falls back to the data's tests.
Data-test outcomes need a GPU: on CPU machines the tests give the report the outcomes a GPU gives (the ``gpu`` test
at the end checks those outcomes for real).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from weak_cases import CASES, PREDICTIONS, RECORDS

from kernelcheck import cli
from kernelcheck import toolchain as kc_toolchain
from kernelcheck.generated import CaseVacuity, GeneratedChecks, SampleCheck, UnknownVerifyBackend, check_generated
from kernelcheck.reports import FunctionalReport, SampleResult
from kernelcheck.side_by_side import SideBySideReport, run_side_by_side

GXX = kc_toolchain.find_gxx()
needs_gxx = pytest.mark.skipif(GXX is None, reason="no C++ compiler (g++): the generated checks need one")
GPU = kc_toolchain.Toolchain(gxx=GXX, nvcc="nvcc", gpu=True)


def _data_report(outcomes: dict[str, list[str]], toolchain=GPU) -> FunctionalReport:
    """The data-test report a run gives with these outcomes (per case id, per sample)."""
    results = [SampleResult(case_id=cid, sample=i, outcome=o) for cid, os in outcomes.items() for i, o in enumerate(os)]
    return FunctionalReport(results=results, references=[], toolchain=toolchain, case_ids=list(outcomes),
                            reference_checked=False)


# ----------------------------------------------------------------------------------------------------------------
# Side by side on hand-made outcomes (no builds)
# ----------------------------------------------------------------------------------------------------------------
def _checks(statuses: dict[str, list[str]], vacuous: dict[str, bool | None], backend: str | None = "cpu"):
    return GeneratedChecks(requested="auto", backend=backend, why_not="" if backend else "no g++",
                           samples={(cid, i): SampleCheck(s, s, backend) for cid, ss in statuses.items()
                                    for i, s in enumerate(ss)},
                           vacuity={cid: CaseVacuity(v, "test") for cid, v in vacuous.items()})


def test_pass_at_k_side_by_side_on_hand_made_outcomes():
    data = {"a": ["pass", "pass", "wrong_output", "pass"], "b": ["pass", "compile_error", "pass", "pass"],
            "c": ["pass", "pass", "pass", "pass"], "v": ["pass", "pass", "pass", "pass"]}
    gen = {"a": ["verified", "mismatch", "mismatch", "verified"],
           "b": ["not_verifiable", "compile_error", "not_verifiable", "not_verifiable"],
           "c": ["mismatch", "mismatch", "mismatch", "mismatch"], "v": ["verified"] * 4}
    report = SideBySideReport(_data_report(data), _checks(gen, {"a": False, "b": False, "c": None, "v": True}))
    s = report.summary()
    side = s["side_by_side"]
    assert side["vacuous"] == ["v"] and side["vacuity_unknown"] == ["c"] and side["cases_scored"] == 3
    cols = side["columns"]
    # data: a 3/4, b 3/4, c 4/4 (v left out); generated: a 2/4, b 0, c 0; data+generated: a 2/4 (sample 1 passes
    # the data but mismatches), b 3/4 (not verifiable: the data's tests decide), c 0.
    assert cols["data"]["pass@1"] == pytest.approx((0.75 + 0.75 + 1) / 3)
    assert cols["generated"]["pass@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert cols["data+generated"]["pass@1"] == pytest.approx((0.5 + 0.75 + 0) / 3)
    assert cols["data+generated"]["pass@k"]["2"] == pytest.approx((1 - 1 / 6 + 1 + 0) / 3)  # a: 1 - C(2,2)/C(4,2)
    assert [cols[c]["cases_passing"] for c in ("data", "generated", "data+generated")] == [3, 1, 2]
    assert s["pass@1"] == pytest.approx((0.75 + 0.75 + 1 + 1) / 4)  # the data's tests over every case, as before
    assert side["caught_by_generated"] == ["a", "c"] and side["data_only_passes"] == ["b"]
    assert side["not_verifiable"] == {"samples": 3, "cases": ["b"]}
    assert s["verification"]["counts"] == {"verified": 6, "mismatch": 6, "not_verifiable": 3, "compile_error": 1}
    lines = report.case_lines()
    assert lines[0]["columns"] == {"data": True, "generated": True, "data+generated": True}
    assert lines[3 * 4]["columns"] == {"data": "vacuous", "generated": "vacuous", "data+generated": "vacuous"}
    table = report.format_table()
    assert "side by side: pass@k over 3 of 4 cases (vacuous, left out of every column: v)" in table
    assert "data+generated" in table and "passed the data's tests, wrong on generated inputs: a, c" in table


def test_columns_say_which_could_run():
    data = {"a": ["skipped"]}
    no_gpu = kc_toolchain.Toolchain(gxx=GXX, nvcc="nvcc", gpu=False)
    report = SideBySideReport(_data_report(data, no_gpu), _checks({"a": ["verified"]}, {"a": False}))
    cols = report.summary()["side_by_side"]["columns"]
    assert cols["generated"]["available"] and cols["generated"]["pass@1"] == 1.0
    for name in ("data", "data+generated"):
        assert not cols[name]["available"] and cols[name]["pass@1"] is None
        assert "skipped (no GPU)" in cols[name]["why"]
    off = SideBySideReport(_data_report({"a": ["pass"], "v": ["pass"]}),
                           GeneratedChecks(requested="off", backend=None, why_not="--verify-backend off"))
    s = off.summary()
    assert s["side_by_side"]["columns"]["data"]["pass@1"] == 1.0 and s["side_by_side"]["cases_scored"] == 2
    assert s["side_by_side"]["columns"]["generated"]["why"] == "generated checks off"
    assert "vacuity not checked" in s["side_by_side"]["note"] and s["verification"]["status"] == "off"
    failed = SideBySideReport(_data_report({"a": ["pass"]}), _checks({"a": ["unavailable"]}, {"a": False}))
    side = failed.summary()["side_by_side"]  # the checker's own failure: listed, the data's tests decide
    assert side["check_failed"] == ["a"] and side["data_only_passes"] == ["a"]
    assert side["columns"]["data+generated"]["pass@1"] == 1.0 and side["columns"]["generated"]["pass@1"] == 0.0
    with pytest.raises(UnknownVerifyBackend, match="'gpu2'"):
        check_generated(CASES, PREDICTIONS, backend="gpu2")


# ----------------------------------------------------------------------------------------------------------------
# Real generated checks on the CPU backend (g++), through the command on a machine without nvcc
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python -m kernelcheck functional`` over the four cases without nvcc: (its report, output dir, stdout)."""
    if GXX is None:
        pytest.skip("no C++ compiler (g++): the generated checks need one")
    tmp = tmp_path_factory.mktemp("side_by_side")
    data, preds, out = tmp / "cases.jsonl", tmp / "preds.jsonl", tmp / "out"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    preds.write_text("".join(json.dumps({"id": cid, "prediction": code}) + "\n"
                             for cid, codes in PREDICTIONS.items() for code in codes))
    reports = []

    def keep(*args, **kwargs):  # the command's own run, kept for the tests below
        reports.append(run_side_by_side(*args, **kwargs))
        return reports[-1]

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
        mp.setattr(cli, "run_side_by_side", keep)
        rc = cli.functional_main(["--data", str(data), "--predictions", str(preds), "--output-dir", str(out),
                                  "--nvcc", str(tmp / "no" / "nvcc"), "--skip-cpp-reference", "--verify-seeds", "1",
                                  "--workers", "2", "--quiet"])
    assert rc == 0
    return reports[0], out, printed.getvalue()


@pytest.mark.slow
@needs_gxx
def test_generated_checks_catch_kernels_the_data_tests_pass(cli_run):
    generated = cli_run[0].generated
    assert generated.backend == "cpu"  # auto without nvcc
    status = {key: check.status for key, check in generated.samples.items()}
    assert status == {("relu", 0): "verified", ("relu", 1): "mismatch", ("scale", 0): "mismatch",
                      ("sum_check", 0): "verified", ("copy", 0): "not_verifiable"}, generated.samples
    assert "on CPU" in generated.samples[("copy", 0)].reason
    assert {cid: v.vacuous for cid, v in generated.vacuity.items()} == \
        {"relu": False, "scale": False, "sum_check": True, "copy": False}
    # What a GPU gives on the data's weak tests: every prediction passes (test_gpu_... below checks it).
    report = SideBySideReport(_data_report({"relu": ["pass", "pass"], "scale": ["pass"], "sum_check": ["pass"],
                                            "copy": ["pass"]}), generated)
    side = report.summary()["side_by_side"]
    assert side["vacuous"] == ["sum_check"] and side["cases_scored"] == 3
    assert side["caught_by_generated"] == ["relu", "scale"] and side["data_only_passes"] == ["copy"]
    cols = side["columns"]
    assert cols["data"]["pass@1"] == 1.0
    assert cols["data+generated"]["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert cols["generated"]["pass@1"] == pytest.approx(0.5 / 3)


@pytest.mark.slow
@needs_gxx
def test_without_nvcc_the_command_runs_only_the_generated_column(cli_run):
    _, out, printed = cli_run
    s = json.loads((out / "functional_results.json").read_text())
    assert s["run_stage"] == "unavailable (no nvcc)" and s["verification"]["status"] == "ran (cpu)"
    assert s["pass@1"] is None  # the data's tests, as before
    side = s["side_by_side"]
    assert side["vacuous"] == ["sum_check"] and side["not_verifiable"] == {"samples": 1, "cases": ["copy"]}
    assert side["columns"]["generated"] == {"available": True, "why": None, "pass@1": pytest.approx(0.5 / 3),
                                            "pass@k": {"1": pytest.approx(0.5 / 3)}, "cases_passing": 1}
    for name in ("data", "data+generated"):
        assert side["columns"][name]["pass@1"] is None and "no nvcc" in side["columns"][name]["why"]
    lines = [json.loads(ln) for ln in (out / "functional_cases.jsonl").read_text().splitlines()]
    assert [(ln["case_id"], ln["columns"]["generated"]) for ln in lines] == \
        [("relu", True), ("relu", False), ("scale", False), ("sum_check", "vacuous"), ("copy", False)]
    assert lines[4]["generated"]["status"] == "not_verifiable" and lines[4]["outcome"] == "unavailable"
    assert "vacuous, left out of every column: sum_check" in printed
    assert "no: the data's tests did not run (run stage unavailable (no nvcc))" in printed
    assert "not verifiable by generated inputs: 1 samples in 1 cases: copy" in printed


# ----------------------------------------------------------------------------------------------------------------
# GPU only: the data's tests really pass the weak kernels
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gxx
def test_gpu_weak_kernels_pass_the_data_tests_and_fail_generated_inputs():
    if kc_toolchain.find_nvcc() is None or shutil.which("nvidia-smi") is None:  # quick: detecting costs a build
        pytest.skip("needs nvcc and a CUDA GPU")
    tc = kc_toolchain.detect_toolchain()
    if not (tc.nvcc and tc.gpu):
        pytest.skip("needs nvcc and a CUDA GPU")
    report = run_side_by_side(CASES, PREDICTIONS, toolchain=tc, workers=2, verify_seeds=1, check_reference=True)
    assert [r.outcome for r in report.functional.results] == ["pass"] * 5
    assert all(r.outcome == "pass" for r in report.functional.references)
    side = report.summary()["side_by_side"]
    assert side["caught_by_generated"] == ["relu", "scale"] and side["vacuous"] == ["sum_check"]
