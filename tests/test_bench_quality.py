"""benchmarks/bench_quality.py's verification columns and ROW+verify@N rows (benchmarks/quality_verify.py), without
the pocket model: candidates from a stand-in generator, rows scored from an answers file (`--predictions`)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from weak_cases import RECORDS, REFERENCE, RELU_ABS

from kernelcheck import toolchain as kc_toolchain
from mot_engine import defaults

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_quality")
qv = sys.modules["benchmarks.quality_verify"]  # imported by the bench (its folder is on sys.path then)


def test_rows_and_which_candidate_is_delivered():
    assert qv.split_row("trained-fast@fewshot-head-v1+verify@4") == ("trained-fast@fewshot-head-v1", 4)
    assert qv.split_row("mot-fast") == ("mot-fast", None)
    with pytest.raises(qv.RowError, match=r"\+verify@0"):
        qv.split_row("mot-fast+verify@0")
    with pytest.raises(qv.RowError, match="ROW\\+verify@N"):
        qv.split_row("mot-fast+verify")
    rows = qv.expand_rows(["gemma3-270m", "mot-fast@kernel-head-v1"], [1, 4])
    assert rows == ["gemma3-270m", "mot-fast@kernel-head-v1", "mot-fast@kernel-head-v1+verify@1",
                    "mot-fast@kernel-head-v1+verify@4"]  # an expert alone is a baseline: no candidates row
    with pytest.raises(qv.RowError, match=r"\[0\]"):
        qv.expand_rows(["mot-fast"], [0])
    k = "kernel"  # the daemon's choice (kernelcheck.candidates), a candidate without a kernel being skipped
    assert qv.choose([(k, "mismatch"), (k, "verified"), (k, "verified")]) == 1  # the first verified
    assert qv.choose([("no_kernel", "syntax_error"), (k, "compile_error"), (k, "mismatch")]) == 2  # else the furthest
    assert qv.choose([("truncated", None), ("no_kernel", None)]) == 0  # ties: greedy first


class _StandIn:
    """A generator and model stand-in that records what it is asked (the engine's candidates: test_candidates.py)."""

    expert_names, num_experts, config = ["a", "b"], 2, SimpleNamespace(top_k=2)
    calls: list[list] = []

    def __init__(self, mot, max_batch_size):
        pass

    def generate(self, requests):
        _StandIn.calls.append(requests)
        return [SimpleNamespace(answer=f"answer {r.temperature} {r.seed}", num_generated_tokens=5, finish_reason="stop",
                                routing={"primary_expert": 1}) for r in requests]


def test_verify_rows_generate_the_daemons_candidates(monkeypatch):
    import mot_engine

    monkeypatch.setattr(mot_engine, "Generator", _StandIn)
    _StandIn.calls = []
    args = SimpleNamespace(batch=8, max_new_tokens=16)
    funcs = [(str(i), f"void f{i}(int n) {{}}") for i in range(3)]
    functions = bench.generate_row("mot-fast+verify@4", funcs, args, {"untrained": _StandIn})
    assert [len(call) for call in _StandIn.calls] == [8, 4]  # two functions a call, each with its 4 candidates
    first = _StandIn.calls[0]
    # greedy, the other active expert's greedy (top_k = 2), then sampled (mot_engine.decoding.candidates)
    assert [(r.temperature, r.top_p, r.seed, r.primary_rank, r.mode) for r in first[:4]] == \
        [(0.0, 1.0, None, 0, "fast"), (0.0, 1.0, None, 1, "fast")] + \
        [(defaults.CANDIDATE_TEMPERATURE, defaults.CANDIDATE_TOP_P, j, 0, "fast") for j in (2, 3)]
    assert [r.source for r in first] == [funcs[0][1]] * 4 + [funcs[1][1]] * 4
    assert [f.id for f in functions] == ["0", "1", "2"] and all(len(f.candidates) == 4 for f in functions)
    assert functions[0].candidates[0] == {"answer": "answer 0.0 None", "tokens": 5, "finish_reason": "stop",
                                          "primary": "b"}
    _StandIn.calls = []
    bench.generate_row("mot-fast", funcs, args, {"untrained": _StandIn})
    assert [len(call) for call in _StandIn.calls] == [3] and all(r.temperature == 0.0 for r in _StandIn.calls[0])


def test_summary_counts_false_verified_and_pass_on_data_and_generated():
    base = {"tokens": 10, "seconds": 1.0, "delivered": True}
    records = [dict(base, verified=True, **{"pass": True, "pass+gen": True}),
               dict(base, verified=True, **{"pass": False, "pass+gen": False}),  # verified, fails the data: false
               dict(base, verified=False, **{"pass": True, "pass+gen": False}, delivery_seconds=3.0)]
    row = bench.summarize(records)
    assert row["verified"] == pytest.approx(2 / 3) and row["pass@1"] == pytest.approx(2 / 3)
    assert row["pass@1+gen"] == pytest.approx(1 / 3) and row["false_verified"] == 1
    assert row["seconds"] == pytest.approx(5 / 3)
    unknown = bench.summarize([dict(base, verified=None, **{"pass": None, "pass+gen": None})])
    assert unknown["verified"] is None and unknown["pass@1"] is None and unknown["false_verified"] is None
    table = bench.table({"a": row, "b": unknown})
    assert "false verified" in table.splitlines()[0] and table.splitlines()[-1].endswith("| – |")


def test_verify_rows_need_a_verification_backend(tmp_path):
    with pytest.raises(SystemExit, match="give --verify-backend"):
        bench.main(["--rows", "mot-fast", "--candidates", "2", "--out", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.skipif(kc_toolchain.find_gxx() is None, reason="no C++ compiler (g++): the generated checks need one")
def test_rows_scored_from_an_answers_file(tmp_path, monkeypatch, capsys):
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS if r["id"] == "relu"))
    # The greedy candidate passes the data's weak tests and is wrong; the second one is right.
    lines = [{"row": "mot-fast", "id": "relu", "candidate": 0, "answer": RELU_ABS, "tokens": 7, "seconds": 0.5}]
    lines += [{"row": "mot-fast+verify@2", "id": "relu", "candidate": j, "answer": code, "tokens": 7, "seconds": 0.9}
              for j, code in enumerate([RELU_ABS, REFERENCE["relu"]])]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setattr(bench, "find_nvcc", lambda: None)  # the compile column is not what is tested here
    out = tmp_path / "out"
    assert bench.main(["--predictions", str(answers), "--data", str(data), "--verify-backend", "cpu",
                       "--verify-seeds", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    plain, chosen = summary["rows"]["mot-fast"], summary["rows"]["mot-fast+verify@2"]
    assert plain["verified"] == 0.0 and chosen["verified"] == 1.0  # the greedy kernel is caught; the right one is
    assert plain["pass@1"] is None and chosen["false_verified"] is None  # no data tests ran here
    assert chosen["tokens"] == 14 and chosen["seconds"] > 0.9  # both candidates; generation + verification
    records = [json.loads(ln) for ln in (out / "mot-fast+verify__2.jsonl").read_text().splitlines()]
    assert [(r["id"], r["candidate"], r["generated"]) for r in records] == [("relu", 1, "verified")]
    assert [json.loads(ln)["generated"] for ln in (out / "mot-fast.jsonl").read_text().splitlines()] == ["mismatch"]
    assert "| mot-fast+verify@2 |" in capsys.readouterr().out


def test_smaller_rows_are_served_by_the_first_candidates_of_a_bigger_one():
    funcs = [qv.Function("a", 2.0, [{"answer": f"a{j}", "tokens": j} for j in range(4)]),
             qv.Function("b", 3.0, [{"answer": f"b{j}", "tokens": j} for j in range(4)])]
    answers = {"trained-full@fmt+verify@4": funcs, "mot-fast": funcs[:1]}
    two = qv.answers_for("trained-full@fmt+verify@2", answers)
    assert [[c["answer"] for c in f.candidates] for f in two] == [["a0", "a1"], ["b0", "b1"]]
    greedy = qv.answers_for("trained-full@fmt", answers)  # the plain row: the greedy candidate
    assert [[c["answer"] for c in f.candidates] for f in greedy] == [["a0"], ["b0"]]
    assert qv.answers_for("mot-fast", answers) is answers["mot-fast"]
    with pytest.raises(qv.RowError, match=r"no row trained-full@fmt\+verify@N with N >= 8"):
        qv.answers_for("trained-full@fmt+verify@8", answers)
    with pytest.raises(qv.RowError, match="no row trained-fast"):  # another base never serves
        qv.answers_for("trained-fast@fmt", answers)
