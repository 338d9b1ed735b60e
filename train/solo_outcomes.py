"""What each expert delivers alone, function by function: the labels that teach fast mode which expert to run.

Fast mode decodes the primary alone, so its quality is the chosen expert's own. The router of a trained checkpoint
picks the primary that does best *with* the interaction (full mode); alone, another expert may do better. For C
functions that are not evaluation data (the generator's pairs, BabelTower's validation pairs outside exec_dev),
each expert translates every function alone (greedy, the checkpoint's prompt format, the primary of fast mode with
no interaction), and each kernel is differentially tested against its C function on generated inputs
(`kernelcheck.verify_many`, the CPU backend where there is no GPU). One line per function:

    {"cpp", "from", "experts": [names], "statuses": [per expert], "parallel": [per expert], "tokens": [...]}

which `python -m train.fast_primary` fits the router's fast-mode head to.

    python -m train.solo_outcomes --checkpoint mot_engine/presets/checkpoints/pocket --synth runs/solo/synth.jsonl \\
        --babeltower ../shared/data/babeltower --out runs/solo/outcomes.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kernelcheck.extract import KERNEL, extract_kernel
from kernelcheck.kernel_shape import PARALLEL, parallelism
from kernelcheck.verify import verify_many

from .self_made import Source, add_source_arguments, chosen_sources


def solo_answers(gen, chunk: list[Source], max_new_tokens: int) -> list[list[tuple[str, int]]]:
    """Per source, per expert: (answer, tokens) of that expert alone (fast mode with it as primary, greedy)."""
    from mot_engine import GenerationRequest

    mot = gen.mot
    k = mot.config.top_k
    force = [[e] + [o for o in range(mot.num_experts) if o != e][: k - 1] for e in range(mot.num_experts)]
    reqs = [GenerationRequest(s.cpp, mode="fast", max_new_tokens=max_new_tokens, force_active=f)
            for s in chunk for f in force]
    results = gen.generate(reqs)
    n = mot.num_experts
    return [[(r.answer, r.num_generated_tokens) for r in results[i * n:(i + 1) * n]] for i in range(len(chunk))]


def outcome(source: Source, experts: list[str], answers: list[tuple[str, int]], backend: str) -> dict:
    """One function's line: each expert's verification status and whether its kernel is parallel."""
    kernels = []
    for answer, _ in answers:
        e = extract_kernel(answer)
        kernels.append(e.code if e.status == KERNEL else "")
    verdicts = verify_many(source.cpp, kernels, backend=backend)
    return {"cpp": source.cpp, "from": source.origin, "experts": experts,
            "statuses": [v.status for v in verdicts],
            "parallel": [bool(k) and parallelism(k) == PARALLEL for k in kernels],
            "tokens": [t for _, t in answers]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(p)
    p.add_argument("--batch", type=int, default=8, help="requests decoded together (a function's experts too)")
    args = p.parse_args(argv)
    todo, left_out = chosen_sources(p, args)

    from mot_engine import Generator, build_mot

    mot = build_mot(None, args.checkpoint, device="cpu")
    gen = Generator(mot, max_batch_size=args.batch)
    experts = list(mot.expert_names)
    per_call = max(1, args.batch // mot.num_experts)
    verified = [0] * len(experts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = 0
    with args.out.open("w") as out:
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            for source, answers in zip(chunk, solo_answers(gen, chunk, args.max_new_tokens)):
                line = outcome(source, experts, answers, args.backend)
                verified = [v + (s == "verified") for v, s in zip(verified, line["statuses"])]
                out.write(json.dumps(line) + "\n")
                done += 1
            out.flush()
            print(f"  {done}/{len(todo)} functions, verified alone: "
                  + ", ".join(f"{n} {v}" for n, v in zip(experts, verified))
                  + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps({"functions": done, "left_out_as_evaluation": left_out,
                      "verified_alone": dict(zip(experts, verified))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
