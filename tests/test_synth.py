"""train.synth: generated pairs are deterministic, unique, cover every family, open with the kernel head, compile
(g++ always, nvcc where installed), run (the C, from a tiny main), and stay apart from the evaluation set."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest

from kernelcheck import toolchain
from kernelcheck.heads import kernel_head
from kernelcheck.parsing import function_signatures
from kernelcheck.sandbox import compile_program, decode_output, run_rlimits, run_sandboxed, scrubbed_env
from train.data import load_jsonl
from train.synth import cli, compile_gate, pipeline, verify_gate
from train.synth.decontaminate import EvalIndex
from train.synth.families import FAMILIES
from train.synth.generate import generate, make_pair
from train.synth.names import FLOATS
from train.synth.textnorm import body_tokens, normalized, shape

REPO = Path(__file__).resolve().parents[1]
EXEC_DEV = REPO.parent / "shared" / "data" / "babeltower" / "exec_dev.jsonl"


@pytest.fixture(scope="module")
def pairs():
    return generate(640, seed=11)


def per_family(pairs, k: int) -> list:
    """The first k pairs of every family (a strided slice of round-robin pairs would miss families)."""
    return [p for f in sorted(FAMILIES) for p in [q for q in pairs if q.family == f][:k]]


def test_same_seed_same_pairs_other_seed_other_pairs():
    first, again, other = generate(80, seed=3), generate(80, seed=3), generate(80, seed=4)
    assert [(p.cpp, p.cuda) for p in first] == [(p.cpp, p.cuda) for p in again]
    assert {p.cpp for p in first}.isdisjoint({p.cpp for p in other})
    for p in first[:16]:  # a pair's own seed makes it again
        assert make_pair(p.seed, p.family).cpp == p.cpp


def test_pairs_are_unique_and_every_family_and_form_is_represented(pairs):
    assert len({normalized(p.cpp) for p in pairs}) == len(pairs) == 640
    assert {p.family for p in pairs} == set(FAMILIES)
    assert {p.form for p in pairs} == {"guard", "early_return", "grid_stride"}
    drawn = {(p.family, p.variant) for p in pairs}
    every = {(f.name, v) for f in FAMILIES.values() for v in f.variants}
    assert len(drawn) > 0.9 * len(every)


def test_every_variant_of_every_family_renders_a_parsable_pair_with_the_kernel_head():
    for family in FAMILIES.values():
        for variant in family.variants:
            for k in range(4):
                spec = family.make(random.Random(k), variant)
                pair = make_pair(k, family.name)  # the whole path, too
                assert spec.variant == variant and pair.family == family.name
                assert pipeline.parse_problem(pair) is None, (family.name, pair.cpp, pair.cuda)


def test_each_kernel_opens_with_the_head_of_its_c_function(pairs):
    for p in pairs:
        head = kernel_head(p.cpp)
        assert head.complete, p.cpp
        assert p.cuda.startswith(head.text + " {\n") and p.cuda.endswith("}")
        signature = function_signatures(p.cpp)[0]
        assert signature.return_type == "void" and all(q.kind in ("scalar", "pointer") for q in signature.parameters)


def test_the_c_of_a_sample_compiles_with_gxx(pairs):
    if toolchain.find_gxx() is None:
        pytest.skip("no g++ on PATH")
    sample = per_family(pairs, 10)
    outcomes = compile_gate.check_batched([p.cpp for p in sample], "gxx", workers=2)
    failed = [(p.cpp, o.message) for p, o in zip(sample, outcomes) if not o.ok]
    assert not failed, failed[:2]


def test_a_batch_failure_is_blamed_on_the_broken_source_only():
    if toolchain.find_gxx() is None:
        pytest.skip("no g++ on PATH")
    sources = [p.cpp for p in generate(12, seed=5)]
    sources[4] = sources[4].replace(";", "", 1)
    sources[9] = sources[9].rstrip("}") + " undefined_name = 1; }"
    outcomes = compile_gate.check_batched(sources, "gxx", batch=12)
    assert [k for k, o in enumerate(outcomes) if not o.ok] == [4, 9]
    assert "undefined_name" in outcomes[9].message


def test_the_kernels_of_a_sample_compile_with_nvcc(pairs):
    if toolchain.find_nvcc() is None:
        pytest.skip(f"nvcc gate skipped: {toolchain.nvcc_missing_message()}")
    sample = per_family(pairs, 3)  # 48 kernels, every family, in one nvcc run
    outcomes = compile_gate.check_batched([p.cuda for p in sample], "nvcc", batch=len(sample))
    failed = [(p.cuda, o.message) for p, o in zip(sample, outcomes) if not o.ok]
    assert not failed, failed[:2]


def _argument(param, k: int) -> tuple[str, str]:
    """(declaration, argument) for one parameter of the tiny main: 64-element arrays, small sizes and strides."""
    t, name = param.type, f"{param.name}_{k}"
    if param.pointer:
        if param.role == "index":
            fill = "i % 3"
        elif param.role == "acc":
            fill = "0"
        else:
            fill = "i % 7" if t.startswith("unsigned") else "(i % 7) - 2"
        decl = f"{t} {name}[64]; for (int i = 0; i < 64; i++) {name}[i] = ({t})({fill});"
        return decl, name
    value = {"size": "4", "stride": "2", "divisor": "3", "bins": "4"}.get(param.role)
    if value is None:
        value = "1.5" if t in FLOATS else "2"
    return "", f"({t}){value}"


def _tiny_program(sample) -> str:
    """Every sampled C function in its own namespace, and a main that calls each on small arrays."""
    parts = [compile_gate.CPP_PRELUDE, "#include <cstdio>"]
    calls = []
    for k, p in enumerate(sample):
        parts.append(f"namespace s{k} {{\n{p.cpp}\n}}")
        decls, args = zip(*(_argument(q, k) for q in p.spec.params))
        calls.append("    {" + " ".join(d for d in decls if d) + f" s{k}::{p.spec.name}({', '.join(args)}); }}")
    parts.append("int main() {\n" + "\n".join(calls) + '\n    std::printf("ran %d\\n", ' + f"{len(sample)});\n"
                 "    return 0;\n}")
    return "\n".join(parts) + "\n"


def test_the_c_of_a_few_pairs_runs_from_a_tiny_main(pairs):
    gxx = toolchain.find_gxx()
    if gxx is None:
        pytest.skip("no g++ on PATH")
    sample = per_family(pairs, 2)
    with tempfile.TemporaryDirectory(prefix="synth-run-") as workdir:
        (Path(workdir) / "main.cpp").write_text(_tiny_program(sample), encoding="utf-8")
        built = compile_program([gxx, "-std=c++17", "-O0", "-w", "main.cpp", "-o", "prog"], workdir, 120)
        assert built.ok, built.message
        result = run_sandboxed(["./prog"], cwd=workdir, env=scrubbed_env(workdir), timeout_s=20,
                               rlimits=run_rlimits(20, cuda=False))
    assert result.returncode == 0, decode_output(result.stderr)
    assert decode_output(result.stdout).strip() == f"ran {len(sample)}"


@pytest.fixture(scope="module")
def eval_functions() -> list[str]:
    if not EXEC_DEV.exists():
        pytest.skip(f"evaluation set {EXEC_DEV} is absent")
    records = [json.loads(line) for line in EXEC_DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r[f] for r in records for f in ("cpp_code", "cuda_code")]


def test_no_written_pair_shares_a_name_or_a_body_with_the_evaluation_set(pairs, eval_functions):
    index = EvalIndex.from_jsonl(EXEC_DEV)
    kept = [p for p in pairs if index.overlap(p.cpp, p.cuda) is None]
    assert len(kept) > 0.95 * len(pairs)  # the gate rejects few: the families are our own
    names = {s.name.lower() for code in eval_functions for s in function_signatures(code)[:1]}
    bodies = {" ".join(body_tokens(code)) for code in eval_functions}
    shapes = {shape(code) for code in eval_functions}
    for p in kept:
        for code in (p.cpp, p.cuda):
            assert function_signatures(code)[0].name.lower() not in names
            assert " ".join(body_tokens(code)) not in bodies and shape(code) not in shapes


def test_the_overlap_gate_catches_a_copy_and_a_renamed_copy(eval_functions):
    index = EvalIndex.from_jsonl(EXEC_DEV)
    cpp = next(code for code in eval_functions if code.lstrip().startswith("void"))
    assert index.overlap(cpp, "__global__ void unrelated_kernel(int n) { }") == "eval_name"
    name = function_signatures(cpp)[0].name
    renamed = cpp.replace(name, "entirely_new_name", 1)
    assert index.overlap(renamed, "__global__ void unrelated_kernel(int n) { }") == "eval_body"
    signature = function_signatures(cpp)[0]
    for k, param in enumerate(signature.parameters):  # rename every parameter too: the shape still matches
        renamed = renamed.replace(f" {param.name} ", f" p{k}_renamed ")
    assert renamed != cpp.replace(name, "entirely_new_name", 1)
    assert index.overlap(renamed, "__global__ void unrelated_kernel(int n) { }") == "eval_shape"


def test_cli_writes_loadable_pairs_and_a_summary_and_reports_gates_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_gate.toolchain, "find_nvcc", lambda env=None: None)  # as on CI without nvcc
    monkeypatch.setattr(verify_gate, "_verify", None)  # as before kernelcheck.verify exists
    out = tmp_path / "pairs.jsonl"
    assert cli.main(["--n", "48", "--seed", "2", "--out", str(out), "--verify", "--no-exclude"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["verified"] is None for r in records)
    assert set(records[0]) == {"cpp", "generated_cuda", "family", "seed", "verified"}
    loaded, report = load_jsonl(out)
    assert len(loaded) == len(records) == report.loaded
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["gates"]["nvcc"].startswith("not run") and summary["gates"]["verify"].startswith("not run")
    assert summary["gates"]["parse"] == "run" and set(summary["families"]) == set(FAMILIES)
    assert all(f["verified"] is None for f in summary["families"].values())
    assert summary["written"] == len(records)


def test_the_verify_gate_counts_verdicts_rejects_failures_and_can_keep_them(monkeypatch):
    class FakeVerdict:
        def __init__(self, status: str):
            self.status, self.reason = status, f"fake {status}"

    def fake_verify(cpp: str, cuda: str, *, backend: str):
        assert backend == "cpu"
        return FakeVerdict("mismatch" if "atomicAdd" in cuda else "verified")

    monkeypatch.setattr(compile_gate.toolchain, "find_nvcc", lambda env=None: None)  # the compile gates are
    monkeypatch.setattr(compile_gate.toolchain, "find_gxx", lambda env=None: None)  # tested above: skip them
    monkeypatch.setattr(verify_gate, "_verify", fake_verify)
    families = ["histogram", "map_unary"]
    candidates, summary = pipeline.run(16, 1, verify=True, families=families)
    data = summary.as_dict()
    assert data["gates"]["verify"] == "run"
    assert data["families"]["histogram"]["verified"] == 0 and data["families"]["map_unary"]["verified"] == 8
    assert data["families"]["histogram"]["rejected"] == {"verify:mismatch": 8}
    assert all(c.verified is (c.pair.family == "map_unary") for c in candidates)
    kept, _ = pipeline.run(16, 1, verify=True, families=families, keep_unverified=True)
    assert sum(not c.rejected for c in kept) == 16 and sum(c.verified is False for c in kept) == 8
