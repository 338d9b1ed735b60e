"""Kernels the experts themselves wrote, kept where they verify: training pairs from the model's own answers.

For C functions that are not evaluation data (the generator's pairs a training stage did not use, BabelTower's
validation pairs outside exec_dev), the MoT writes N candidates per function as the daemon does (greedy first, then
sampled with the daemon's temperature and top-p), each candidate's kernel is differentially tested against its C
function on generated inputs (`kernelcheck.verify_many`, CPU backend where there is no GPU), and the first
candidate that is both verified and parallel (its thread index reaches the work: `kernelcheck.kernel_shape`) becomes
a pair `{"cpp", "generated_cuda"}` — what `python -m train.pocket_data --self FILE` adds to a training set. A serial
kernel that verifies is never kept: training on it would teach the habit the interaction exists to break.

    python -m train.self_made --checkpoint mot_engine/presets/checkpoints/pocket --synth runs/pocket/synth.jsonl \\
        --synth-from 1021 --babeltower ../shared/data/babeltower --candidates 4 --out runs/pocket/self.jsonl

Prints how many functions, candidates, verified and kept; every function's checks go to OUT with `.log.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kernelcheck.extract import KERNEL, extract_kernel
from kernelcheck.kernel_shape import PARALLEL, parallelism
from kernelcheck.verify import verify_many

from .data import load_pairs
from .pocket_data import evaluation_keys, is_evaluation

DEFAULT_EXEC = Path("../shared/data/babeltower/exec_dev.jsonl")


@dataclass(frozen=True)
class Source:
    origin: str  # "synth" or "babeltower"
    cpp: str


def sources(synth: Path | None, synth_from: int, babeltower: Path | None, exec_path: Path) -> tuple[list[Source], int]:
    """C functions to translate, evaluation data left out: (sources, how many were left out)."""
    texts, names = evaluation_keys(exec_path)
    out, left_out, candidates = [], 0, []
    if synth is not None:
        for number, line in enumerate(synth.read_text().splitlines(), start=1):
            pair = json.loads(line)
            if number >= synth_from:  # the C side alone: the model's kernels are checked against it here
                candidates.append(Source("synth", pair["cpp"]))
    if babeltower is not None:
        pairs, _ = load_pairs(str(babeltower / "cpp.para.valid.tok"))
        candidates += [Source("babeltower", p.source) for p in pairs]
    for s in candidates:
        if is_evaluation(s.cpp, "", texts, names):
            left_out += 1
        else:
            out.append(s)
    return out, left_out


def keep_first_verified_parallel(kernels: list[str], statuses: list[str]) -> int | None:
    """The index of the first candidate that is verified and parallel, or None."""
    for j, (code, status) in enumerate(zip(kernels, statuses)):
        if status == "verified" and code and parallelism(code) == PARALLEL:
            return j
    return None


def generate(gen, chunk: list[Source], n: int, max_new_tokens: int) -> list[list[str]]:
    """Each source's N answers (the daemon's candidates: greedy, then sampled with their own seeds)."""
    from mot_engine import GenerationRequest
    from mot_engine.defaults import CANDIDATE_TEMPERATURE, CANDIDATE_TOP_P

    reqs = [GenerationRequest(s.cpp, mode="full", max_new_tokens=max_new_tokens,
                              **({} if j == 0 else {"temperature": CANDIDATE_TEMPERATURE, "top_p": CANDIDATE_TOP_P,
                                                    "seed": j}))
            for s in chunk for j in range(n)]
    results = gen.generate(reqs)
    return [[r.answer for r in results[k * n:(k + 1) * n]] for k in range(len(chunk))]


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a run over training functions: the checkpoint, where the C functions come from (evaluation
    data left out), how many, how long an answer, where kernels are verified, and the output file."""
    p.add_argument("--checkpoint", required=True, help="a MoT checkpoint (its preset and prompt format)")
    p.add_argument("--synth", type=Path, default=None, help="train.synth's pairs (JSONL)")
    p.add_argument("--synth-from", type=int, default=1, help="the first line of --synth to use (1-based): skip the "
                   "lines a training stage already used")
    p.add_argument("--babeltower", type=Path, default=None, help="the folder of cpp.para.valid.tok")
    p.add_argument("--exec", dest="exec_path", type=Path, default=DEFAULT_EXEC, help="the evaluation set, left out")
    p.add_argument("--limit", type=int, default=None, help="the first N sources")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--backend", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument("--out", type=Path, required=True)


def chosen_sources(p: argparse.ArgumentParser, args) -> tuple[list[Source], int]:
    """The sources `add_source_arguments`' options name: (sources, how many were left out as evaluation data)."""
    if args.synth is None and args.babeltower is None:
        p.error("give --synth, --babeltower or both")
    if not args.exec_path.is_file():
        p.error(f"the evaluation set {args.exec_path} is not there: it is needed to leave it out")
    todo, left_out = sources(args.synth, args.synth_from, args.babeltower, args.exec_path)
    return todo[: args.limit], left_out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(p)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="requests decoded together (a function's candidates too)")
    args = p.parse_args(argv)
    if args.candidates < 1:
        p.error(f"--candidates must be >= 1, got {args.candidates}")
    todo, left_out = chosen_sources(p, args)

    from mot_engine import Generator, build_mot

    gen = Generator(build_mot(None, args.checkpoint, device="cpu"), max_batch_size=args.batch)
    per_call = max(1, args.batch // args.candidates)
    counts = {"functions": 0, "left_out_as_evaluation": left_out, "candidates": 0, "kernels": 0, "verified": 0,
              "verified_parallel": 0, "kept": 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log.jsonl")
    t0 = time.perf_counter()
    with args.out.open("w") as out, log_path.open("w") as log:
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            for source, answers in zip(chunk, generate(gen, chunk, args.candidates, args.max_new_tokens)):
                extractions = [extract_kernel(a) for a in answers]
                kernels = [e.code if e.status == KERNEL else "" for e in extractions]
                verdicts = verify_many(source.cpp, kernels, backend=args.backend)
                statuses = [v.status for v in verdicts]
                j = keep_first_verified_parallel(kernels, statuses)
                counts["functions"] += 1
                counts["candidates"] += len(answers)
                counts["kernels"] += sum(bool(k) for k in kernels)
                counts["verified"] += statuses.count("verified")
                counts["verified_parallel"] += sum(s == "verified" and bool(k) and parallelism(k) == PARALLEL
                                                   for k, s in zip(kernels, statuses))
                if j is not None:
                    counts["kept"] += 1
                    out.write(json.dumps({"cpp": source.cpp, "generated_cuda": kernels[j], "origin": "self",
                                          "from": source.origin, "candidate": j}) + "\n")
                log.write(json.dumps({"cpp": source.cpp, "from": source.origin, "statuses": statuses,
                                      "reasons": [v.reason for v in verdicts], "kept": j}) + "\n")
            out.flush()
            log.flush()
            print(f"  {counts['functions']}/{len(todo)} functions, {counts['kept']} kept "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
