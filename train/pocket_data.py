"""The training set of the shipped `pocket` checkpoint, assembled from sources that are never the evaluation set:

* pairs generated and differentially verified by `train.synth` (only those whose `verified` is true);
* BabelTower's validation pairs (`cpp.para.valid.tok` / `cuda.para.valid.tok`) that are not in exec_dev: a pair is
  left out when its normalized C source, its normalized CUDA, or its function's name is one of exec_dev's;
* optionally, kernels the experts themselves wrote and that verified against their C source (`--self JSONL`, lines
  `{"cpp", "generated_cuda"}`).

    python -m train.pocket_data --synth runs/pocket/synth.jsonl --babeltower ../shared/data/babeltower \\
        --out runs/pocket/train.jsonl

Writes JSONL `{"cpp", "generated_cuda", "origin"}` (shuffled with `--seed`) and prints how many came from where and
how many were left out as evaluation data.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from .data import load_pairs
from .detokenize import detokenize

_NAME = re.compile(r"([A-Za-z_]\w*)\s*\(")


def _norm(code: str) -> str:
    return " ".join(code.split())


def _name(code: str) -> str | None:
    match = _NAME.search(code)
    return match.group(1) if match else None


def evaluation_keys(exec_path: Path) -> tuple[set[str], set[str]]:
    """(normalized sources and kernels, function names) of the evaluation set."""
    texts, names = set(), set()
    for line in exec_path.read_text().splitlines():
        case = json.loads(line)
        for field in ("cpp_code", "cuda_code"):
            code = detokenize(case[field])
            texts.add(_norm(code))
            names.add(_name(code))
    names.discard(None)
    return texts, names


def is_evaluation(cpp: str, cuda: str, texts: set[str], names: set[str]) -> bool:
    return _norm(cpp) in texts or _norm(cuda) in texts or _name(cpp) in names or _name(cuda) in names


def assemble(synth: Path | None, babeltower: Path | None, exec_path: Path, self_made: Path | None,
             seed: int) -> tuple[list[dict], dict]:
    texts, names = evaluation_keys(exec_path)
    rows, counts = [], {"synth": 0, "babeltower": 0, "self": 0, "left_out_as_evaluation": 0, "unverified_synth": 0}

    def add(cpp: str, cuda: str, origin: str) -> None:
        if is_evaluation(cpp, cuda, texts, names):
            counts["left_out_as_evaluation"] += 1
            return
        rows.append({"cpp": cpp, "generated_cuda": cuda, "origin": origin})
        counts[origin] += 1

    if synth is not None:
        for line in synth.read_text().splitlines():
            pair = json.loads(line)
            if pair.get("verified") is True:
                add(pair["cpp"], pair["generated_cuda"], "synth")
            else:
                counts["unverified_synth"] += 1
    if babeltower is not None:
        pairs, _ = load_pairs(str(babeltower / "cpp.para.valid.tok"))
        for pair in pairs:
            add(pair.source, pair.target, "babeltower")
    if self_made is not None:
        for line in self_made.read_text().splitlines():
            pair = json.loads(line)
            add(pair["cpp"], pair["generated_cuda"], "self")
    random.Random(seed).shuffle(rows)
    return rows, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synth", type=Path, default=None, help="train.synth's JSONL (only verified pairs are used)")
    p.add_argument("--babeltower", type=Path, default=None, help="the folder of BabelTower's .tok files")
    p.add_argument("--exec", dest="exec_path", type=Path, default=None,
                   help="the evaluation set to leave out (default: exec_dev.jsonl beside --babeltower's files)")
    p.add_argument("--self", dest="self_made", type=Path, default=None, help="verified kernels the experts wrote")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    exec_path = args.exec_path or (args.babeltower / "exec_dev.jsonl" if args.babeltower else None)
    if exec_path is None or not exec_path.is_file():
        p.error(f"the evaluation set to leave out is missing ({exec_path}); give --exec")
    rows, counts = assemble(args.synth, args.babeltower, exec_path, args.self_made, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps({"pairs": len(rows), **counts}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
