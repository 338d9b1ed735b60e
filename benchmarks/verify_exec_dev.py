"""The differential check on BabelTower's exec_dev cases: reference kernels against their C code, and mutants.

    python benchmarks/verify_exec_dev.py [--data ../shared/data/babeltower/exec_dev.jsonl] [--backend cpu|gpu]
        [--mutants] [--workers 2] [--limit N] [--output report.json]

Prints, for the 122 reference kernels, how many ``kernelcheck.verify`` reports verified / mismatch / not
verifiable (with every reason), and with ``--mutants`` the mutant suite's table (`kernelcheck.mutant_suite`):
per mutant kind, caught / verified-but-equivalent / verified-and-different / not verifiable, over the cases
whose reference kernel is verified.  Everything uses generated inputs only (the data set's tests are not read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernelcheck.mutant_suite import CaseResult, run_case, summarize  # noqa: E402
from kernelcheck.mutants import MUTANT_KINDS  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "babeltower" / "exec_dev.jsonl"


def _run(record: dict, backend: str, mutants: bool) -> CaseResult:
    return run_case(str(record["id"]), record["cpp_code"], record["cuda_code"], backend=backend,
                    kinds=MUTANT_KINDS if mutants else ())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--backend", choices=("cpu", "gpu", "auto"), default="cpu")
    p.add_argument("--mutants", action="store_true", help="also run the mutant suite")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--output", default=None, help="write the full report (JSON) here")
    args = p.parse_args(argv)
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    records = records[: args.limit] if args.limit else records
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(lambda r: _run(r, args.backend, args.mutants), records))
    statuses = Counter(r.reference.status for r in results)
    print(f"reference kernels: {len(results)}  " + "  ".join(f"{k}={v}" for k, v in statuses.most_common()))
    for r in results:
        if r.reference.status != "verified":
            print(f"  {r.case_id}: {r.reference.status}: {r.reference.reason[:300]}")
    report = {"backend": args.backend, "references": {r.case_id: r.reference.to_json() for r in results},
              "reference_statuses": dict(statuses), "seconds": round(time.monotonic() - start, 1)}
    if args.mutants:
        summary = summarize(results)
        report["mutant_suite"] = summary
        report["mutants"] = {r.case_id: [m.__dict__ for m in r.mutants] for r in results}
        print(f"mutant suite over the {summary['references_verified']} verified references:")
        for kind, row in summary["kinds"].items():
            print(f"  {kind:18s} {row['mutants']:4d} mutants: caught {row['caught']}, verified-equivalent "
                  f"{row['verified_equivalent']}, verified-DIFFERENT {row['verified_different']}, not verifiable "
                  f"{row['not_verifiable']}  (caught rate {row['caught_rate']}, score {row['score']})")
        for r in results:
            for m in r.mutants:
                if m.outcome == "verified_different" and r.reference.status == "verified":
                    print(f"  BLIND SPOT {r.case_id} {m.kind} {m.description}")
                elif m.outcome == "verified_different":  # the reference kernel is itself wrong: not a blind spot
                    print(f"  {r.case_id} {m.kind}: a mutant of a {r.reference.status} reference kernel matches the "
                          "C function")
    print(f"{time.monotonic() - start:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
