"""The data of a run split three ways: `split_pairs` (ratios and seed), the length policy (over-long pairs are
skipped, never truncated), and `load_splits` / `apply_length_limit`, which do both for a run's arguments and keep
the report that data_report.json and eval_results.json show.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from kernelcheck.cases import has_test_cases
from mot_engine import SourceTooLong

from .data import load_pairs
from .outputs import say
from .pairs import DataReport, Pair


SPLIT_NAMES = ("train", "validation", "test")

# ---------------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------------


def split_pairs(
    pairs: Sequence[Pair], train_ratio: float = 0.8, test_ratio: float = 0.1, seed: int = 42
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Shuffle with `random.Random(seed)` and cut into (train, val, test).

    train gets round(n * train_ratio) pairs, test round(n * test_ratio) (capped to what is left), val
    the remainder. `random.Random` with an int seed does not depend on PYTHONHASHSEED, so the same
    pairs and seed give the same split on every run. Each split keeps the pairs' original order.
    """
    for name, ratio in (("train_ratio", train_ratio), ("test_ratio", test_ratio)):
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio!r}")
    if train_ratio + test_ratio > 1.0 + 1e-9:
        raise ValueError(f"train_ratio + test_ratio must be <= 1, got {train_ratio} + {test_ratio} = {train_ratio + test_ratio}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    count = len(pairs)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    train_count = round(count * train_ratio)
    test_count = min(round(count * test_ratio), count - train_count)
    train_indices = sorted(order[:train_count])
    test_indices = sorted(order[train_count : train_count + test_count])
    val_indices = sorted(order[train_count + test_count :])
    return ([pairs[i] for i in train_indices], [pairs[i] for i in val_indices], [pairs[i] for i in test_indices])


# ---------------------------------------------------------------------------------------------------
# Length policy
# ---------------------------------------------------------------------------------------------------


@dataclass
class LengthReport:
    """What `apply_length_policy` did. Origins identify the pairs; `truncated` lists (origin, number of
    prompt tokens the tokenization step must cut from the end of the source)."""

    max_length: int
    policy: str
    total: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    truncated: list[tuple[str, int]] = field(default_factory=list)
    target_too_long: int = 0  # skipped pairs whose target alone leaves no room for a prompt
    longest: int = 0  # longest prompt + target seen, in tokens

    def summary(self, max_origins: int = 5) -> str:
        text = f"length policy {self.policy!r} at max_length={self.max_length}: kept {self.kept} of {self.total}"
        if self.truncated:
            text += f"; {len(self.truncated)} kept with the source cut"
        if self.skipped:
            shown = ", ".join(self.skipped[:max_origins]) + (", ..." if len(self.skipped) > max_origins else "")
            text += f"; skipped {len(self.skipped)} ({shown}), {self.target_too_long} with a target too long by itself"
        return text + f"; longest pair {self.longest} tokens"


def apply_length_policy(
    pairs: Sequence[Pair],
    count_tokens: Callable[[Pair], tuple[int, int]],
    max_length: int,
    policy: Literal["skip", "truncate_source"] = "skip",
    *,
    min_prompt_tokens: int = 1,
) -> tuple[list[Pair], LengthReport]:
    """Decide what happens to pairs whose prompt + target exceed `max_length` tokens.

    `count_tokens(pair)` returns (prompt tokens, target tokens) as the trainer will tokenize them.
    The target is never truncated: a model trained on cut-off kernels learns to stop mid-kernel.

    * "skip" (default): over-long pairs are left out and listed in the report.
    * "truncate_source": an over-long pair is kept when cutting the source is enough, i.e. when the
      target plus `min_prompt_tokens` (the prompt template and what must remain of the source) fits;
      the pair is returned unchanged and `report.truncated` says how many prompt tokens the
      tokenization step must cut. Pairs whose target alone does not leave that room are skipped.
    """
    if policy not in ("skip", "truncate_source"):
        raise ValueError(f"policy must be 'skip' or 'truncate_source', got {policy!r}")
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if not isinstance(min_prompt_tokens, int) or not 0 < min_prompt_tokens < max_length:
        raise ValueError(f"min_prompt_tokens must be an int in (0, max_length={max_length}), got {min_prompt_tokens!r}")
    report = LengthReport(max_length=max_length, policy=policy)
    kept = []
    for pair in pairs:
        counts = count_tokens(pair)
        if (
            not isinstance(counts, tuple)
            or len(counts) != 2
            or not all(isinstance(c, int) and c >= 0 for c in counts)
        ):
            raise ValueError(f"count_tokens must return (prompt_tokens, target_tokens) >= 0, got {counts!r} for {pair.origin}")
        prompt_tokens, target_tokens = counts
        report.total += 1
        report.longest = max(report.longest, prompt_tokens + target_tokens)
        if prompt_tokens + target_tokens <= max_length:
            kept.append(pair)
            continue
        source_can_be_cut = target_tokens + min_prompt_tokens <= max_length
        if policy == "truncate_source" and source_can_be_cut:
            report.truncated.append((pair.origin, prompt_tokens + target_tokens - max_length))
            kept.append(pair)
            continue
        report.skipped.append(pair.origin)
        report.target_too_long += not source_can_be_cut
    report.kept = len(kept)
    return kept, report


# ---------------------------------------------------------------------------------------------------------------
# The splits of a run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DataSplits:
    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]
    report: DataReport
    case_ids: dict[str, str] = field(default_factory=dict)  # pair origin -> executable case id (exec files)
    length_reports: dict[str, LengthReport] = field(default_factory=dict)

    def get(self, name: str) -> list[Pair]:
        if name == "all":
            return sorted(self.train + self.validation + self.test, key=_origin_key)
        return getattr(self, name)

    def summary(self) -> dict:
        out = {
            "load": {
                "sources": self.report.sources,
                "lines_read": self.report.lines_read,
                "loaded": self.report.loaded,
                "skipped": self.report.skipped,
                "skipped_by_kind": self.report.counts(),
                "problems": [vars(p) for p in self.report.problems],
            },
            "splits": {name: len(self.get(name)) for name in SPLIT_NAMES},
        }
        if self.length_reports:
            out["length_policy"] = {
                name: {
                    "policy": r.policy, "max_length": r.max_length, "total": r.total, "kept": r.kept,
                    "skipped": len(r.skipped), "skipped_origins": r.skipped, "target_too_long": r.target_too_long,
                    "longest": r.longest,
                }
                for name, r in self.length_reports.items()
            }
        return out


def _origin_key(pair: Pair):
    name, _, line = pair.origin.rpartition(":")
    return (name, int(line) if line.isdigit() else 0)


def jsonl_options(args, exec_file: bool) -> dict:
    """Field names and detokenization for a JSONL file: executable BabelTower files are recognised."""
    path = Path(args.data_path)
    if path.suffix != ".jsonl" or not path.is_file():
        return {}
    opts = {
        "source_field": args.source_field or ("cpp_code" if exec_file else "cpp"),
        "target_field": args.target_field or ("cuda_code" if exec_file else "generated_cuda"),
    }
    if args.detokenize or (exec_file and not args.source_field and not args.target_field):
        opts["detokenize_text"] = True
    return opts


def _is_exec_file(path: Path) -> bool:
    return has_test_cases(path)


def _case_ids(path: Path) -> dict[str, str]:
    """origin ("file:line") -> the record's "id", for executable BabelTower files."""
    ids = {}
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh.read().split(b"\n"), start=1):
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "id" in record:
                ids[f"{path.name}:{n}"] = str(record["id"])
    return ids


def load_splits(args, accelerator=None) -> DataSplits:
    """Load, report and split the data of --data_path (cheap: no model needed)."""
    path = Path(args.data_path)
    exec_file = path.suffix == ".jsonl" and path.is_file() and _is_exec_file(path)
    opts = jsonl_options(args, exec_file)
    pairs, report = load_pairs(args.data_path, **opts)
    say(report.summary(), accelerator)
    if not pairs:
        raise ValueError(f"{args.data_path}: no usable pairs ({report.lines_read} lines read, {report.skipped} skipped)")
    train, val, test = split_pairs(pairs, args.train_ratio, args.test_ratio, args.seed)
    case_ids = _case_ids(path) if exec_file else {}
    return DataSplits(train, val, test, report, case_ids)


def token_counter(mot):
    """count_tokens for apply_length_policy: the (prompt, target + EOS) lengths of the expert whose
    tokenization of the pair is longest (any expert may be routed as primary)."""
    def count(pair: Pair) -> tuple[int, int]:
        worst = (0, 0)
        for e in range(mot.num_experts):
            try:
                p = len(mot.prompt_ids(e, pair.source))
            except SourceTooLong as err:
                p = err.actual
            t = len(mot.target_ids(e, pair.target)) + 1
            if p + t > sum(worst):
                worst = (p, t)
        return worst

    return count


def apply_length_limit(splits: DataSplits, mot, max_length: int, accelerator=None) -> DataSplits:
    """Skip pairs over `max_length` tokens in every split (policy 'skip', counts in the report); never truncate.

    `build_model` raises the engine's max_source_tokens to max_length when needed, so every kept prompt runs.
    """
    count = token_counter(mot)
    for name in SPLIT_NAMES:
        kept, rep = apply_length_policy(getattr(splits, name), count, max_length, "skip")
        setattr(splits, name, kept)
        splits.length_reports[name] = rep
        if rep.skipped:
            say(f"{name}: {rep.summary()}", accelerator)
    return splits

