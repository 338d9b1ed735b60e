"""Quality benchmark: what users get for the 122 functions of exec_dev (../shared/data/babeltower/exec_dev.jsonl).

Rows (`--rows`, each `WHO[@FORMAT]`): a pocket expert alone (`smollm2-135m-instruct`, `gemma3-270m`: fast mode with
that expert as primary, greedy), the MoT without a checkpoint (`mot-fast`, `mot-full`) and with one (`trained-fast`,
`trained-full`, from `--checkpoint`), each in a prompt format (mot_engine/model/prompts.py; default: the model's own).
A row `ROW+verify@N` (or `--candidates 1 4 8`, which adds them to each MoT row) generates N candidates per function as
the daemon does (greedy first, then each other active expert as primary, then sampled), verifies them against the
function's C code on generated inputs and delivers what the daemon delivers: the first verified one, else the one
whose check got furthest (benchmarks/quality_verify.py, kernelcheck.candidates).
Columns, per function: a kernel delivered (`kernelcheck.extract`: a complete `__global__` function), syntax valid
(tree-sitter-cuda), parallel (`kernelcheck.kernel_shape`: the thread index reaches the work) and serial (the C loop
whole in every thread: counted apart), compiles (nvcc -c), verified (the delivered kernel matched the C function on
generated inputs: `kernelcheck.verify`, on `--verify-backend`'s backend: the CPU where there is no GPU; "–" when
off), functional pass@1 of the delivered kernel (the data's own tests through `kernelcheck.functional`: needs a GPU,
so it is filled in by `--functional DIR` on a GPU machine from the predictions this run writes) and pass@1 on data +
generated tests (a pass of the data's tests that no generated check found wrong), generated tokens (all candidates)
and seconds per function (to deliver: generation, plus the verification that chooses on +verify rows), and false
"verified" (delivered kernels verified on generated inputs that fail the data's tests: a count, GPU only). Shares
are of all functions. Ratios are to the first row of the run (put the single-expert baseline first).

    python benchmarks/bench_quality.py --rows smollm2-135m-instruct@fewshot-head-v1 mot-fast trained-fast \\
        --checkpoint checkpoints/pocket --candidates 1 4 8 --verify-backend auto --out runs/quality  # generation...
    python benchmarks/bench_quality.py --predictions runs/quality/answers.jsonl --verify-backend cpu --out runs/q2
    python benchmarks/bench_quality.py --functional runs/quality      # GPU machine: pass@1, the final table

Writes DIR/answers.jsonl (every candidate's answer: what `--predictions FILE` scores without a model),
DIR/<row>.jsonl (one prediction per function: the delivered kernel, its status and checks) and DIR/summary.json,
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality_verify import (  # noqa: E402
    Function,
    RowError,
    answers_for,
    choose,
    expand_rows,
    load_answers,
    split_row,
    verify_functions,
    write_answers,
)
from kernelcheck.cases import load_exec_cases  # noqa: E402
from kernelcheck.compile_check import nvcc_compile_check  # noqa: E402
from kernelcheck.extract import KERNEL, extract_kernel  # noqa: E402
from kernelcheck.generated import FAILING_STATUSES, VERIFY_BACKENDS  # noqa: E402
from kernelcheck.kernel_shape import PARALLEL, SERIAL, parallelism  # noqa: E402
from kernelcheck.parsing import is_valid_cuda  # noqa: E402
from kernelcheck.toolchain import RUN_STAGE_RAN, find_nvcc  # noqa: E402
from mot_engine.decoding.candidates import candidate_samplings  # noqa: E402
from mot_engine.defaults import TEMPERATURE, TOP_P  # noqa: E402
from train.detokenize import detokenize  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babeltower" / "exec_dev.jsonl"
DEFAULT_ROWS = ("smollm2-135m-instruct", "gemma3-270m", "mot-fast", "mot-full")
COLUMNS = ("delivered", "syntax", "parallel", "serial", "compiles", "verified", "pass@1", "pass@1+gen")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=None,
                   help="rows to generate (default: " + " ".join(DEFAULT_ROWS) + "); with --predictions, rows to "
                        "score from the answers file (default: all of its rows; ROW and ROW+verify@M are also "
                        "served by the first candidates of a ROW+verify@N in it, N >= M)")
    p.add_argument("--preset", default="pocket")
    p.add_argument("--checkpoint", default=None, help="the trained checkpoint of the trained-* rows")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--limit", type=int, default=None, help="the first N functions only (a quick look)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="requests decoded together")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--functional", metavar="DIR", default=None,
                   help="run the functional tests of the predictions in DIR (GPU) and print the final table")
    p.add_argument("--candidates", type=int, nargs="+", default=[],
                   help="add rows ROW+verify@N for these N to each MoT row (N candidates, the first verified one "
                        "delivered); needs --verify-backend")
    # Off unless asked (the harness's own default is kernelcheck.generated.DEFAULT_VERIFY_BACKEND): the column is
    # optional here, and a function's check costs seconds of CPU beside a generation that may take less.
    p.add_argument("--verify-backend", choices=VERIFY_BACKENDS, default="off",
                   help="where delivered kernels are checked on generated inputs (the verified column; +verify "
                        "rows need it): auto (GPU where one runs, else CPU), gpu, cpu, off (default)")
    p.add_argument("--verify-seeds", type=int, default=None, help="seeds per size combination of the generated "
                   "inputs (default: kernelcheck.verify's)")
    p.add_argument("--predictions", metavar="FILE", default=None,
                   help="score the rows of an answers file (DIR/answers.jsonl of an earlier run) instead of "
                        "generating: no model needed; --rows picks among its rows (--candidates is not used)")
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
        if key == "untrained":
            import torch

            torch.manual_seed(0)  # the fresh router and interaction layers: the same in every run
        cache[key] = build_mot(args.preset if key == "untrained" else None,
                               args.checkpoint if key == "trained" else None, device="cpu",
                               untrained=key == "untrained")
    return cache[key]


def generate_row(row: str, funcs: list[tuple[str, str]], args, cache: dict) -> list[Function]:
    """One row's answers: per function its candidates (one, greedy; N for ROW+verify@N: greedy, then sampled) and
    the seconds they took (batched: `--batch` requests at a time, a function's candidates together)."""
    from mot_engine import GenerationRequest, Generator

    base, n = split_row(row)
    n = n or 1
    who, _, fmt = base.partition("@")
    mot = _model(who, args, cache)
    if who in mot.expert_names:  # the expert alone: primary in fast mode, no interaction
        e = mot.expert_names.index(who)
        force, mode = [e] + [o for o in range(mot.num_experts) if o != e][: mot.config.top_k - 1], "fast"
    else:
        force, mode = None, "full" if who.endswith("full") else "fast"
    # the daemon's candidates (mot_engine.decoding.candidates): greedy, each other active expert as primary (not
    # for an expert-alone row: its primary is the row), then sampled
    samplings = candidate_samplings(TEMPERATURE, TOP_P, None, n, mot.config.top_k if force is None else 1,
                                    mode=mode)
    gen = Generator(mot, max_batch_size=args.batch)
    per_call = max(1, args.batch // n)  # functions a call; each brings its n candidates (one shared prefill)
    out: list[Function] = []
    for start in range(0, len(funcs), per_call):
        chunk = funcs[start:start + per_call]
        t0 = time.perf_counter()
        results = gen.generate([
            GenerationRequest(src, mode=c.mode or mode, max_new_tokens=args.max_new_tokens, prompt_format=fmt or None,
                              force_active=force, temperature=c.temperature, top_p=c.top_p, seed=c.seed,
                              primary_rank=c.primary_rank, rank_by=c.rank_by)
            for _, src in chunk for c in samplings])
        seconds = (time.perf_counter() - t0) / len(chunk)
        for k, (case_id, _) in enumerate(chunk):
            out.append(Function(case_id, seconds, [
                {"answer": r.answer, "tokens": r.num_generated_tokens, "finish_reason": r.finish_reason,
                 "primary": mot.expert_names[r.routing["primary_expert"]]} for r in results[k * n:(k + 1) * n]]))
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


def score_row(row: str, functions: list[Function], cases: dict, nvcc: str | None, args) -> list[dict]:
    """Per function the delivered candidate — a plain row's first (greedy) one; on ROW+verify@N the first of its N
    candidates verified on generated inputs, else the furthest (quality_verify.choose) — with its static checks
    and, where verification runs, its verdict."""
    _, n = split_row(row)
    short = [f.id for f in functions if len(f.candidates) < (n or 1)]
    if short:
        raise RowError(f"row {row!r}: fewer than {n or 1} candidates for functions {short[:10]}")
    functions = [Function(f.id, f.seconds, f.candidates[: n or 1]) for f in functions]
    checks = None
    if args.verify_backend != "off":
        checks = verify_functions(functions, cases, args.verify_backend, seeds=args.verify_seeds)
        if not checks.ran:
            if n:
                raise RowError(f"row {row!r} chooses by verifying, and the checks cannot run: {checks.why_not}")
            print(f"  note: the verified column is n/a: {checks.why_not}", file=sys.stderr)
            checks = None
    records = []
    for f in functions:
        verdicts = [checks.samples[(f.id, i)] if checks else None for i in range(len(f.candidates))]
        extractions = [extract_kernel(c["answer"]) for c in f.candidates]
        extracted = [e.status for e in extractions]
        shapes = [parallelism(e.code) == PARALLEL for e in extractions]
        pick = choose([(e, v.status if v else None) for e, v in zip(extracted, verdicts)], shapes) if n else 0
        verdict = verdicts[pick] if extracted[pick] == KERNEL else None  # no kernel: nothing was verified
        verify_seconds = verdicts[0].seconds if checks else 0.0  # one check per function for all its candidates
        records.append({"id": f.id, **f.candidates[pick], "candidate": pick, "candidates": len(f.candidates),
                        "tokens": sum(c["tokens"] for c in f.candidates), "seconds": f.seconds,
                        "verify_seconds": verify_seconds,
                        "delivery_seconds": f.seconds + (verify_seconds if n else 0.0),
                        "generated": verdict.status if verdict else None,
                        "generated_reason": verdict.reason if verdict else None,
                        "verified": None if checks is None else bool(verdict and verdict.status == "verified")})
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda r: check(r, nvcc), records))


# The record field behind each column that is filled in later or only where a tool is (None until then: "–").
LATER = {"verified": "verified", "pass@1": "pass", "pass@1+gen": "pass+gen"}


def summarize(records: list[dict]) -> dict:
    n = len(records)
    row = {c: sum(bool(r.get(c)) for r in records) / n for c in COLUMNS if c not in LATER}
    for column, name in LATER.items():
        known = [r[name] for r in records if r.get(name) is not None]
        row[column] = sum(known) / n if known else None
    both = [r for r in records if r.get("verified") is not None and r.get("pass") is not None]
    row["false_verified"] = sum(r["verified"] and not r["pass"] for r in both) if both else None
    row["tokens"] = sum(r["tokens"] for r in records) / n
    row["seconds"] = sum(r.get("delivery_seconds", r["seconds"]) for r in records) / n
    row["verify_seconds"] = sum(r.get("verify_seconds", 0.0) for r in records) / n
    row["n"] = n
    return row


def table(rows: dict[str, dict]) -> str:
    base = next(iter(rows.values()))
    lines = ["| row | " + " | ".join(COLUMNS) + " | tokens/fn | s/fn | false verified |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for name, r in rows.items():
        cells = []
        for c in COLUMNS:
            if r.get(c) is None:
                cells.append("–")
                continue
            ratio = f" ({r[c] / base[c]:.2f}x)" if base.get(c) else ""
            cells.append(f"{100 * r[c]:.0f}%{ratio}")
        false_verified = "–" if r.get("false_verified") is None else str(r["false_verified"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['tokens']:.0f} | {r['seconds']:.1f} | "
                     f"{false_verified} |")
    return "\n".join(lines)


def run_functional(out: Path) -> None:
    """pass@1 of each row's delivered kernels with the data's tests (GPU), and on data + generated tests where the
    row was verified, into DIR's files and the summary."""
    from kernelcheck.functional import evaluate_functional

    summary = json.loads((out / "summary.json").read_text())
    cases = {c.id: c for c in load_exec_cases(summary["data"])}
    for name in summary["rows"]:
        path = out / f"{name.replace('@', '__')}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        predictions = {r["id"]: [r["prediction"]] for r in records}
        report = evaluate_functional([cases[i] for i in predictions], predictions, check_reference=False)
        ran = report.run_stage == RUN_STAGE_RAN  # else no pass is known: "–", never 0 %
        passed = {res.case_id for res in report.results if res.outcome == "pass"}
        for r in records:
            r["pass"] = (r["id"] in passed and r["delivered"]) if ran else None
            verified = r.get("verified") is not None
            r["pass+gen"] = (r["pass"] and r.get("generated") not in FAILING_STATUSES) if ran and verified else None
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        summary["rows"][name] = summarize(records)
        summary["rows"][name]["run_stage"] = report.run_stage
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary["rows"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.functional:
        run_functional(Path(args.functional))
        return 0
    try:
        answers = load_answers(args.predictions) if args.predictions else None
        if answers is not None:
            rows = args.rows or list(answers)
            answers = {row: answers_for(row, answers) for row in rows}
        else:
            rows = expand_rows(args.rows or DEFAULT_ROWS, args.candidates)
        choosing = [row for row in rows if split_row(row)[1]]
    except RowError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if choosing and args.verify_backend == "off":
        raise SystemExit(f"error: rows {choosing} choose among candidates by verifying them: give --verify-backend "
                         "auto|gpu|cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    funcs, nvcc, cache, summaries = sources(args.data, args.limit), find_nvcc(), {}, {}
    cases = {c.id: c for c in load_exec_cases(args.data)}
    answers_path = out / "answers.jsonl"
    if answers is None:
        answers_path.write_text("")  # this run's candidates, appended row by row
    for row in rows:
        if answers is None:
            functions = generate_row(row, funcs, args, cache)
            write_answers(answers_path, row, functions)
        else:
            functions = answers[row][: args.limit]
            unknown = [f.id for f in functions if f.id not in cases]
            if unknown:
                raise SystemExit(f"error: {args.predictions}: ids not in {args.data}: {unknown[:10]}")
        try:
            records = score_row(row, functions, cases, nvcc, args)
        except RowError as exc:
            raise SystemExit(f"error: {exc}") from exc
        (out / f"{row.replace('@', '__')}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summaries[row] = summarize(records)
        summary = {"data": args.data, "preset": args.preset, "checkpoint": args.checkpoint, "nvcc": nvcc,
                   "verify_backend": args.verify_backend, "predictions": args.predictions,
                   "date": time.strftime("%Y-%m-%d"), "rows": summaries}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(table(summaries), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
