"""`python -m train.synth --n 3000 --seed 0 --out pairs.jsonl [--verify] [--workers 2]`.

Writes the pairs that pass the gates (`train.synth.pipeline`) as JSON Lines —
`{"cpp", "generated_cuda", "family", "seed", "verified"}`, which `train.data.load_jsonl` reads — and a summary
(per family: generated, rejected by reason, passed per gate, verified) to stderr and to `<out>.summary.json`.
By default pairs are kept apart from the evaluation set at `decontaminate.DEFAULT_EVAL_SET` when that file exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .decontaminate import DEFAULT_EVAL_SET, EvalIndex
from .families import FAMILIES
from .pipeline import GATES, Summary, run


def summary_path(out: Path) -> Path:
    """`pairs.jsonl` -> `pairs.summary.json` (next to the output)."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, required=True, help="pairs to generate (those passing the gates are written)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    p.add_argument("--verify", action="store_true", help="run the differential check (kernelcheck.verify)")
    p.add_argument("--keep-unverified", action="store_true",
                   help="with --verify: write pairs the verifier does not verify, with verified=false")
    p.add_argument("--workers", type=int, default=1, help="compiler/verifier runs at once")
    p.add_argument("--families", default="", help=f"comma-separated subset of: {', '.join(sorted(FAMILIES))}")
    p.add_argument("--exclude", type=Path, default=None,
                   help=f"evaluation JSONL to keep pairs apart from (default: {DEFAULT_EVAL_SET} when present)")
    p.add_argument("--no-exclude", action="store_true", help="skip the evaluation-overlap gate")
    return p


def format_summary(summary: Summary) -> str:
    """The summary as a table: one row per family, gate pass counts as passed/entered."""
    data = summary.as_dict()
    run_gates = [g for g in GATES if data["gates"].get(g) == "run"]
    gate_cells = " ".join(f"{g:>12}" for g in run_gates)
    header = f"{'family':<15} {'gen':>5} {'dup':>4} {gate_cells} {'written':>7}  rejected"
    lines = [header]
    for name, fam in data["families"].items():
        passed = {g: fam["verified"] if g == "verify" else fam["gates"][g]["passed"] for g in run_gates}
        cells = " ".join(f"{passed[g]:>6}/{fam['gates'][g]['entered']:<5}" for g in run_gates)
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(fam["rejected"].items()))
        lines.append(f"{name:<15} {fam['generated']:>5} {fam['duplicates_skipped']:>4} {cells} {fam['written']:>7}  "
                     f"{reasons}")
    lines.append(f"written {data['written']} of {data['generated']} generated; seconds: {data['seconds']}")
    lines += [f"gate {g}: {state}" for g, state in data["gates"].items() if state != "run"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.n < 0 or args.workers < 1:
        print(f"--n must be >= 0 and --workers >= 1, got --n {args.n} --workers {args.workers}", file=sys.stderr)
        return 2
    exclude = None if args.no_exclude else (args.exclude or (DEFAULT_EVAL_SET if DEFAULT_EVAL_SET.exists() else None))
    if exclude is not None and not exclude.exists():
        print(f"--exclude {exclude}: no such file", file=sys.stderr)
        return 2
    families = [f.strip() for f in args.families.split(",") if f.strip()] or None
    candidates, summary = run(args.n, args.seed, verify=args.verify, workers=args.workers,
                              eval_index=EvalIndex.from_jsonl(exclude) if exclude else None,
                              keep_unverified=args.keep_unverified, families=families)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for c in candidates:
            if not c.rejected:
                out.write(json.dumps(c.pair.record(c.verified)) + "\n")
    data = summary.as_dict()
    data["out"], data["eval_set"] = str(args.out), str(exclude) if exclude else None
    summary_path(args.out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(format_summary(summary), file=sys.stderr)
    return 0
