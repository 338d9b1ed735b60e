"""Fast mode's rows of bench_quality, composed from the experts' own rows: no model decodes.

Fast mode decodes one expert alone: its greedy answer is, token for token, that expert's answer alone (invariants 5
and 20 of ARCHITECTURE.md). So given an answers file that holds each expert's greedy row (`bench_quality.py --rows
smollm2-135m-instruct@F gemma3-270m@F`), the answers of `trained-fast` (the expert the checkpoint's router runs
alone, for each function) and of `trained-fast+verify@N` (a fast-mode translation's candidates: the experts in the
order the router ranks them for decoding alone) are known without decoding again; this script routes each function
with the checkpoint and writes those rows as an answers file for `bench_quality.py --predictions`.

    python benchmarks/fast_rows.py --checkpoint mot_engine/presets/checkpoints/pocket \\
        --answers runs/solo_exec/answers.jsonl --format fewshot-head-v1 --out runs/fast/answers.jsonl
    python benchmarks/bench_quality.py --predictions runs/fast/answers.jsonl --verify-backend cpu --out runs/fast
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import DATA, sources  # noqa: E402
from benchmarks.quality_verify import load_answers  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--answers", type=Path, required=True, help="an answers file with each expert's greedy row")
    p.add_argument("--format", default=None, help="the rows' prompt format (WHO@FORMAT); default: the checkpoint's")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--row", default="trained-fast", help="the name of the composed row")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import torch

    from mot_engine import build_mot

    mot = build_mot(None, args.checkpoint, device="cpu")
    fmt = args.format or mot.config.prompt_format
    rows = load_answers(args.answers)
    names = [f"{e}@{fmt}" if fmt else e for e in mot.expert_names]
    missing = [n for n in names if n not in rows]
    if missing:
        raise SystemExit(f"{args.answers} has no row {missing} (it has {sorted(rows)})")
    by_expert = [{f.id: f for f in rows[n]} for n in names]
    funcs = [(fid, src) for fid, src in sources(args.data, None) if all(fid in b for b in by_expert)]
    chosen = [0] * mot.num_experts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # as the Generator routes a fast-mode row: its active experts, in the order of decoding alone
        active = mot.route([src for _, src in funcs], noise=False, alone_rows=[True] * len(funcs)).active.tolist()
    n = mot.config.top_k  # a translation's alone candidates: its active experts
    with args.out.open("w") as out:
        for (fid, _), ranked in zip(funcs, active):
            chosen[ranked[0]] += 1
            for row, count in ((args.row, 1), (f"{args.row}+verify@{n}", n)):
                for i, e in enumerate(ranked[:count]):
                    f = by_expert[e][fid]
                    candidate = f.candidates[0]
                    out.write(json.dumps({"row": row, "id": fid, "candidate": i, "seconds": f.seconds,
                                          "answer": candidate["answer"], "tokens": candidate["tokens"],
                                          "finish_reason": candidate["finish_reason"],
                                          "primary": mot.expert_names[e]}) + "\n")
    print(f"{len(funcs)} functions; fast mode runs alone: "
          + ", ".join(f"{e} {c}" for e, c in zip(mot.expert_names, chosen)) + f"; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
