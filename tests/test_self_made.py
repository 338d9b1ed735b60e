"""train.self_made: the experts' own kernels become training pairs only where they verify and are parallel, and
evaluation data is never a source. The model is a stand-in that answers with hand-written kernels; the kernels are
really built and differentially tested (g++, the CPU backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernelcheck.toolchain import find_gxx
from train import pocket_data, self_made

EXEC = Path(__file__).resolve().parents[2] / "shared" / "data" / "babeltower" / "exec_dev.jsonl"

SCALE = "void scale(float* x, float a, int n) {\n  for (int i = 0; i < n; ++i) x[i] = a * x[i];\n}"
RIGHT = ("__global__ void scale(float* x, float a, int n) {\n  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
         "  if (i < n) x[i] = a * x[i];\n}")
WRONG = RIGHT.replace("a * x[i]", "a + x[i]")
SERIAL = "__global__ void scale(float* x, float a, int n) {\n  for (int i = 0; i < n; ++i) x[i] = a * x[i];\n}"
ANSWERS = {0: WRONG, 1: SERIAL, 2: RIGHT, 3: RIGHT.replace("a * x[i]", "x[i] * a")}


class StandInGenerator:
    """Answers each request with a fixed kernel per candidate index (greedy = 0, then the sampled seeds)."""

    requests: list = []

    def __init__(self, mot, max_batch_size):
        pass

    def generate(self, requests):
        StandInGenerator.requests += requests
        return [type("R", (), {"answer": ANSWERS[r.seed or 0]})() for r in requests]


def test_candidate_choice_needs_verified_and_parallel():
    assert self_made.keep_first_verified_parallel([WRONG, SERIAL, RIGHT], ["mismatch", "verified", "verified"]) == 2
    assert self_made.keep_first_verified_parallel([SERIAL, ""], ["verified", "syntax_error"]) is None


@pytest.mark.skipif(not EXEC.is_file(), reason=f"the evaluation set is not at {EXEC}")
def test_evaluation_functions_are_never_sources(tmp_path):
    first_eval = json.loads(EXEC.read_text().splitlines()[0])["cpp_code"]
    synth = tmp_path / "synth.jsonl"
    synth.write_text("".join(json.dumps({"cpp": c, "generated_cuda": ""}) + "\n" for c in (SCALE, first_eval, SCALE)))
    todo, left_out = self_made.sources(synth, 2, None, EXEC)
    assert [s.cpp for s in todo] == [SCALE] and left_out == 1  # line 1 skipped by --synth-from, line 2 is exec_dev


@pytest.mark.skipif(find_gxx() is None, reason="no C++ compiler (g++): kernels cannot be verified here")
@pytest.mark.skipif(not EXEC.is_file(), reason=f"the evaluation set is not at {EXEC}")
def test_only_a_verified_parallel_kernel_becomes_a_pair(tmp_path, monkeypatch, capsys):
    import mot_engine

    monkeypatch.setattr(mot_engine, "Generator", StandInGenerator)
    monkeypatch.setattr(mot_engine, "build_mot", lambda *a, **k: None)
    StandInGenerator.requests = []
    synth = tmp_path / "synth.jsonl"
    synth.write_text(json.dumps({"cpp": SCALE, "generated_cuda": RIGHT}) + "\n")
    out = tmp_path / "self.jsonl"
    assert self_made.main(["--checkpoint", "unused", "--synth", str(synth), "--exec", str(EXEC), "--candidates", "4",
                           "--backend", "cpu", "--out", str(out)]) == 0
    assert [(r.temperature > 0, r.seed) for r in StandInGenerator.requests] == \
        [(False, None), (True, 1), (True, 2), (True, 3)]  # the daemon's candidates: greedy, then sampled
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["generated_cuda"].strip() == RIGHT and pair["candidate"] == 2  # the wrong one and the serial one passed over
    (log,) = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    # the serial one scales x in place in every thread: wrong under the multi-thread launch it is verified with
    assert log["statuses"] == ["mismatch", "mismatch", "verified", "verified"]
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts | {"left_out_as_evaluation": 0} == {"functions": 1, "left_out_as_evaluation": 0, "candidates": 4,
                                                      "kernels": 4, "verified": 2, "verified_parallel": 2, "kept": 1}
    rows, sources = pocket_data.assemble(None, None, EXEC, out, seed=0)  # what a training stage reads
    assert sources["self"] == 1 and rows[0]["generated_cuda"].strip() == RIGHT
