"""Quality benchmark: what users get for the 122 functions of exec_dev (../shared/data/babeltower/exec_dev.jsonl).

Rows (`--rows`, each `WHO[@FORMAT]`): a pocket expert alone (`smollm2-135m-instruct`, `gemma3-270m`: fast mode with
that expert as primary, greedy), the MoT without a checkpoint (`mot-fast`, `mot-full`) and with one (`trained-fast`,
`trained-full`, from `--checkpoint`), each in a prompt format (mot_engine/model/prompts.py; default: the model's own).
Columns, per function: a kernel delivered (`kernelcheck.extract`: a complete `__global__` function), syntax valid
(tree-sitter-cuda), parallel (`kernelcheck.kernel_shape`: the thread index reaches the work) and serial (the C loop
whole in every thread: counted apart), compiles (nvcc -c), functional pass@1 of the delivered kernel (the data's own
tests through `kernelcheck.functional`: needs a GPU, so it is filled in by `--functional DIR` on a GPU machine from
the predictions this run writes), generated tokens and seconds per function. Ratios are to the first row of the
run (put the single-expert baseline first).

    python benchmarks/bench_quality.py --rows smollm2-135m-instruct@fewshot-head-v1 mot-fast trained-fast \\
        --checkpoint checkpoints/pocket --out runs/quality          # CPU: generation, syntax, compile
    python benchmarks/bench_quality.py --functional runs/quality      # GPU machine: pass@1, the final table

Writes DIR/<row>.jsonl (one prediction per function: the delivered kernel, its status and checks) and
DIR/summary.json, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernelcheck.cases import load_exec_cases  # noqa: E402
from kernelcheck.compile_check import nvcc_compile_check  # noqa: E402
from kernelcheck.extract import KERNEL, extract_kernel  # noqa: E402
from kernelcheck.kernel_shape import PARALLEL, SERIAL, parallelism  # noqa: E402
from kernelcheck.parsing import is_valid_cuda  # noqa: E402
from kernelcheck.toolchain import find_nvcc  # noqa: E402
from train.detokenize import detokenize  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babeltower" / "exec_dev.jsonl"
COLUMNS = ("delivered", "syntax", "parallel", "serial", "compiles", "pass@1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m", "mot-fast", "mot-full"])
    p.add_argument("--preset", default="pocket")
    p.add_argument("--checkpoint", default=None, help="the trained checkpoint of the trained-* rows")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--limit", type=int, default=None, help="the first N functions only (a quick look)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--functional", metavar="DIR", default=None,
                   help="run the functional tests of the predictions in DIR (GPU) and print the final table")
    return p.parse_args(argv)


def sources(path: str, limit: int | None) -> list[tuple[str, str]]:
    cases = load_exec_cases(path)[:limit]
    return [(c.id, detokenize(c.cpp_code)) for c in cases]


def _model(who: str, args, cache: dict):
    from mot_engine import build_mot

    key = "trained" if who.startswith("trained") else "untrained"
    if key not in cache:
        if key == "trained" and not args.checkpoint:
            raise SystemExit(f"row {who!r} needs --checkpoint")
        cache[key] = build_mot(args.preset if key == "untrained" else None,
                               args.checkpoint if key == "trained" else None, device="cpu",
                               untrained=key == "untrained")
    return cache[key]


def generate_row(row: str, funcs: list[tuple[str, str]], args, cache: dict) -> list[dict]:
    """One row's answers: per function its answer, tokens and seconds (batched, greedy)."""
    from mot_engine import GenerationRequest, Generator

    who, _, fmt = row.partition("@")
    mot = _model(who, args, cache)
    if who in mot.expert_names:  # the expert alone: primary in fast mode, no interaction
        e = mot.expert_names.index(who)
        force, mode = [e] + [o for o in range(mot.num_experts) if o != e][: mot.config.top_k - 1], "fast"
    else:
        force, mode = None, "full" if who.endswith("full") else "fast"
    gen = Generator(mot, max_batch_size=args.batch)
    out = []
    for start in range(0, len(funcs), args.batch):
        chunk = funcs[start:start + args.batch]
        t0 = time.perf_counter()
        results = gen.generate([GenerationRequest(src, mode=mode, max_new_tokens=args.max_new_tokens,
                                                  prompt_format=fmt or None, force_active=force) for _, src in chunk])
        seconds = (time.perf_counter() - t0) / len(chunk)
        for (case_id, _), r in zip(chunk, results):
            out.append({"id": case_id, "answer": r.answer, "tokens": r.num_generated_tokens, "seconds": seconds,
                        "finish_reason": r.finish_reason, "primary": mot.expert_names[r.routing["primary_expert"]]})
        print(f"  {row}: {len(out)}/{len(funcs)}", file=sys.stderr, flush=True)
    return out


def check(record: dict, nvcc: str | None) -> dict:
    """The delivered kernel and its static checks (extraction, syntax, parallelism, nvcc)."""
    extraction = extract_kernel(record["answer"])
    code = extraction.code
    record.update(prediction=code, status=extraction.status, delivered=extraction.status == KERNEL,
                  syntax=bool(code) and is_valid_cuda(code), shape=parallelism(code) if code else None)
    record["parallel"], record["serial"] = record["shape"] == PARALLEL, record["shape"] == SERIAL
    record["compiles"] = bool(code) and nvcc is not None and nvcc_compile_check(code, nvcc=nvcc).status == "ok"
    return record


def summarize(records: list[dict]) -> dict:
    n = len(records)
    row = {c: sum(bool(r.get(c)) for r in records) / n for c in COLUMNS if c != "pass@1"}
    passes = [r["pass"] for r in records if "pass" in r]
    row["pass@1"] = sum(passes) / n if passes else None
    row["tokens"] = sum(r["tokens"] for r in records) / n
    row["seconds"] = sum(r["seconds"] for r in records) / n
    row["n"] = n
    return row


def table(rows: dict[str, dict]) -> str:
    base = next(iter(rows.values()))
    lines = ["| row | " + " | ".join(COLUMNS) + " | tokens/fn | s/fn |", "|---" * (len(COLUMNS) + 3) + "|"]
    for name, r in rows.items():
        cells = []
        for c in COLUMNS:
            if r[c] is None:
                cells.append("–")
                continue
            ratio = f" ({r[c] / base[c]:.2f}x)" if base.get(c) else ""
            cells.append(f"{100 * r[c]:.0f}%{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['tokens']:.0f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def run_functional(out: Path) -> None:
    """pass@1 of each row's delivered kernels with the data's tests (GPU), into DIR's files and the summary."""
    from kernelcheck.functional import evaluate_functional

    summary = json.loads((out / "summary.json").read_text())
    cases = {c.id: c for c in load_exec_cases(summary["data"])}
    for name in summary["rows"]:
        path = out / f"{name.replace('@', '__')}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        predictions = {r["id"]: [r["prediction"]] for r in records}
        report = evaluate_functional([cases[i] for i in predictions], predictions, check_reference=False)
        passed = {res.case_id for res in report.results if res.outcome == "pass"}
        for r in records:
            r["pass"] = r["id"] in passed and r["delivered"]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        summary["rows"][name] = summarize(records)
        summary["rows"][name]["run_stage"] = report.summary().get("run_stage")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary["rows"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.functional:
        run_functional(Path(args.functional))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    funcs, nvcc, cache, rows = sources(args.data, args.limit), find_nvcc(), {}, {}
    for row in args.rows:
        records = generate_row(row, funcs, args, cache)
        with ThreadPoolExecutor(2) as pool:
            records = list(pool.map(lambda r: check(r, nvcc), records))
        (out / f"{row.replace('@', '__')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        rows[row] = summarize(records)
        summary = {"data": args.data, "preset": args.preset, "checkpoint": args.checkpoint, "nvcc": nvcc,
                   "date": time.strftime("%Y-%m-%d"), "rows": rows}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
