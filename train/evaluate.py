"""Evaluation of a MoT, and the data/model set-up that training and evaluation share.

- `load_splits` reads the data (malformed lines reported with line numbers, never fatal), splits it by ratios and
  seed (train.data.split_pairs), and `apply_length_limit` skips pairs longer than --max_length in every split.
- `build_model` turns the command-line choices (preset / experts / quantization / devices / checkpoint) into a
  MixtureOfThoughts through mot_engine.build_mot.
- `evaluate_generation` translates the sources (fast or full mode, greedy), scores them with train.metrics and
  collects routing statistics; `evaluate_lm_loss` is the teacher-forced loss. Both shard the pairs over the
  processes of an accelerate launch and gather the results.
- `run_evaluation` is `mot-eval`: eval_results.json (+ eval_predictions.jsonl), and functional correctness
  (kernelcheck.functional, pass@1) where the data has executable tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from kernelcheck.cases import has_test_cases, load_exec_cases
from kernelcheck.functional import evaluate_functional

from .data import DataReport, LengthReport, Pair, apply_length_policy, load_pairs, split_pairs

SPLIT_NAMES = ("train", "validation", "test")


def say(message: str, accelerator=None) -> None:
    """A line for the user on stderr, from the main process only (tqdm-safe)."""
    if accelerator is not None and not accelerator.is_main_process:
        return
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:
        print(message, file=sys.stderr)


def write_json(path: Path, obj) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Data
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
    """count_tokens for train.data.apply_length_policy: the (prompt, target + EOS) lengths of the expert whose
    tokenization of the pair is longest (any expert may be routed as primary)."""
    from mot_engine import SourceTooLong

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


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def parse_experts(value: str):
    """--experts: `id,id,...` / `name=path,...` / a JSON file holding a list of ExpertConfig dicts (or paths)."""
    from mot_engine import ExpertConfig

    path = Path(value)
    if value.endswith(".json") and path.is_file():
        items = json.loads(path.read_text())
        if not isinstance(items, list) or not items:
            raise ValueError(f"{value}: expected a non-empty JSON list of experts")
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(ExpertConfig(name=Path(item).name or item, path=item))
            elif isinstance(item, dict):
                out.append(ExpertConfig(**item))
            else:
                raise ValueError(f"{value}: item {i} is neither a path nor an object")
        return out
    out = []
    for item in (s.strip() for s in value.split(",")):
        if not item:
            raise ValueError(f"empty expert in {value!r}")
        name, sep, p = item.partition("=")
        if not sep:
            name, p = item.rstrip("/").split("/")[-1], item
        out.append(ExpertConfig(name=name, path=p))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ValueError(f"expert names must differ, got {names}; name them as NAME=PATH")
    return out


def resolve_checkpoint(path) -> Path | None:
    """A checkpoint folder, the best_model/ of a training output folder, a .pt file; None if none of them."""
    from mot_engine.model.checkpoint import METADATA

    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        return path
    if (path / METADATA).is_file():
        return path
    if (path / "best_model" / METADATA).is_file():
        return path / "best_model"
    return None


def choose_experts(args, meta: dict | None = None) -> tuple[list, str | None]:
    """(experts, encoder) without loading anything: --experts, else --preset, else what the checkpoint (metadata
    `meta`) was trained with, else the default preset. Sets args.preset to the preset used (args.json records it).
    Raises PresetUnavailable, saying how to get a preset's weights or packages."""
    from mot_engine.model.config import ExpertConfig
    from mot_engine.presets.registry import default_preset, resolve_preset

    if args.experts:
        return parse_experts(args.experts), args.encoder
    if args.preset is None and meta is not None and meta.get("preset") is None and meta["mot_config"].get("experts"):
        # trained with --experts: the checkpoint names them (its devices were the training machine's)
        experts = [ExpertConfig(**{**e, "device": None}) for e in meta["mot_config"]["experts"]]
        return experts, args.encoder or meta["encoder"]["id"]
    if args.preset is None:
        args.preset = (meta or {}).get("preset") or default_preset()
    experts, encoder = resolve_preset(args.preset)
    return experts, args.encoder or encoder


def model_overrides(args) -> dict:
    over = {}
    for name in ("num_stacks", "top_k", "lambda_consistency"):
        if getattr(args, name, None) is not None:
            over[name] = getattr(args, name)
    if getattr(args, "train_encoder", False):
        over["train_encoder"] = True
    return over


def build_model(args, device, *, checkpoint=None, world_size: int = 1):
    """A MixtureOfThoughts for these arguments, on `device`; optionally with a checkpoint's weights.

    Without a checkpoint the unset MoT options take the engine's defaults; with one, its configuration (and its
    preset when none is named). A checkpoint trained with --experts (no preset) brings its experts back.
    """
    from mot_engine import build_mot
    from mot_engine.model.checkpoint import read_checkpoint_metadata
    from mot_engine.model.config import MoTConfig

    from .cli import DEFAULT_LAMBDA_CONSISTENCY, DEFAULT_NUM_STACKS, DEFAULT_TOP_K

    device = torch.device(device)
    meta = None
    if checkpoint is not None and Path(checkpoint).suffix != ".pt":
        meta = read_checkpoint_metadata(checkpoint)
    overrides = model_overrides(args)
    if meta is None:
        overrides.setdefault("num_stacks", DEFAULT_NUM_STACKS)
        overrides.setdefault("top_k", DEFAULT_TOP_K)
        overrides.setdefault("lambda_consistency", DEFAULT_LAMBDA_CONSISTENCY)
    if args.max_length > MoTConfig.max_source_tokens:  # a kept pair's prompt must never be refused
        overrides["max_source_tokens"] = args.max_length
    experts, encoder = choose_experts(args, meta)
    quant = "4bit" if args.use_4bit else "8bit" if args.use_8bit else None
    dtype = None if args.dtype == "auto" else args.dtype
    if device.type == "cuda" and not args.single_gpu and world_size == 1 and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        for i, e in enumerate(experts):
            e.device = f"cuda:{i % n}"
    mot = build_mot(args.preset, checkpoint, device=device, dtype=dtype, quantization=quant, experts=experts,
                    encoder=encoder, **overrides)
    return mot


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def _shard(items: list, accelerator) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    return list(items[accelerator.process_index :: accelerator.num_processes])


def _gather(items: list, accelerator) -> list:
    """Every process gets the items of all processes (callers restore the order)."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return [item for part in gather_object([list(items)]) for item in part]


@torch.no_grad()
def generate(mot, sources: list[str], *, mode: str, max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy translations: [{"text", "routing", "finish_reason", "error"}], one per source, in order.

    A request that fails (NaN/Inf logits, a prompt too long for a context) becomes an empty prediction with its
    error recorded; the others go on.
    """
    from mot_engine import GenerationRequest, Generator

    was_training = mot.training
    mot.eval()
    gen = Generator(mot, max_batch_size=batch_size)
    out: list[dict | None] = [None] * len(sources)
    for i, src in enumerate(sources):
        req = GenerationRequest(source=src, mode=mode, max_new_tokens=max_new_tokens, temperature=0.0)
        try:
            gen.add_request(str(i), req)
        except ValueError as e:
            out[i] = {"text": "", "routing": {}, "finish_reason": "error", "error": str(e)}
    while gen.has_unfinished():
        gen.step()
    for rid, res in gen.results.items():
        out[int(rid)] = {"text": res.text, "routing": res.routing, "finish_reason": res.finish_reason,
                         "error": res.error}
    mot.train(was_training)
    return out  # type: ignore[return-value]


def routing_statistics(routings: list[dict], expert_names: list[str]) -> dict:
    """How often each expert was primary / active, mean routing probabilities, mean router entropy (nats)."""
    routings = [r for r in routings if r]
    n = len(routings)
    primary = {name: 0 for name in expert_names}
    active = {name: 0 for name in expert_names}
    probs = [0.0] * len(expert_names)
    entropy = 0.0
    for r in routings:
        primary[expert_names[r["primary_expert"]]] += 1
        for e in r["active_experts"]:
            active[expert_names[e]] += 1
        p = r["all_expert_probs"]
        for e, v in enumerate(p):
            probs[e] += v
        entropy -= sum(v * math.log(v) for v in p if v > 0)
    return {
        "samples": n,
        "primary_counts": primary,
        "primary_share": {k: (v / n if n else None) for k, v in primary.items()},
        "active_counts": active,
        "active_share": {k: (v / n if n else None) for k, v in active.items()},
        "mean_expert_probs": {name: (probs[e] / n if n else None) for e, name in enumerate(expert_names)},
        "mean_router_entropy": entropy / n if n else None,
        "max_router_entropy": math.log(len(expert_names)),
    }


def evaluate_generation(
    mot, pairs: list[Pair], *, mode: str = "fast", max_new_tokens: int = 256, batch_size: int = 8,
    compile_check: bool = False, per_sample_metrics: bool = True, accelerator=None, case_ids: dict | None = None,
) -> tuple[dict, list[dict]]:
    """(summary, records) of greedy generation over `pairs`: corpus metrics, routing statistics, and one record
    per pair (source, reference, prediction, routing, sample metrics). Sharded over processes, gathered."""
    from .metrics import compute_metrics, sample_metrics

    start = time.perf_counter()
    indexed = list(enumerate(pairs))
    mine = _shard(indexed, accelerator)
    outs = generate(mot, [p.source for _, p in mine], mode=mode, max_new_tokens=max_new_tokens, batch_size=batch_size)
    names = mot.expert_names
    records = []
    for (i, pair), o in zip(mine, outs):
        r = o["routing"] or {}
        rec = {
            "index": i,
            "id": pair.origin,
            "source": pair.source,
            "reference": pair.target,
            "prediction": o["text"],
            "primary_expert": names[r["primary_expert"]] if r else None,
            "active_experts": [names[e] for e in r.get("active_experts", [])],
            "routing_probs": {names[e]: p for e, p in enumerate(r.get("all_expert_probs", []))},
            "routing": r,
            "finish_reason": o["finish_reason"],
        }
        if case_ids and pair.origin in case_ids:
            rec["case_id"] = case_ids[pair.origin]
        if o.get("error"):
            rec["error"] = o["error"]
        if per_sample_metrics:
            rec["metrics"] = sample_metrics(o["text"], pair.target)
        records.append(rec)
    records = sorted(_gather(records, accelerator), key=lambda r: r["index"])
    summary: dict = {"num_samples": len(records), "generation_mode": mode, "max_new_tokens": max_new_tokens}
    if records:
        preds = [r["prediction"] for r in records]
        refs = [r["reference"] for r in records]
        summary["metrics"] = compute_metrics(preds, refs, compile_check=compile_check)
        if not compile_check:
            summary["metrics"]["compile_rate"] = {"status": "not run", "value": None,
                                                  "message": "compile checks were switched off (--no_compile_check)"}
    else:
        summary["metrics"] = None
    summary["routing"] = routing_statistics([r["routing"] for r in records], names)
    summary["errors"] = sum(1 for r in records if r["finish_reason"] == "error")
    summary["finish_reasons"] = {k: sum(r["finish_reason"] == k for r in records) for k in ("eos", "length", "error")}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary, records


@torch.no_grad()
def evaluate_lm_loss(mot, pairs: list[Pair], *, batch_size: int = 8, accelerator=None) -> dict:
    """Token-weighted teacher-forced LM loss (deterministic routing: eval mode). Sharded, reduced."""
    was_training = mot.training
    mot.eval()
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    nonfinite = 0
    mine = _shard(pairs, accelerator)
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    with autocast:
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            out = mot([p.source for p in chunk], [p.target for p in chunk])
            if out.nonfinite:
                nonfinite += 1
                continue
            total += out.lm_loss.detach().double().cpu() * out.num_target_tokens
            tokens += out.num_target_tokens
    mot.train(was_training)
    stats = torch.tensor([float(total), float(tokens), float(nonfinite)], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum").cpu()
    total, tokens, nonfinite = float(stats[0]), int(stats[1]), int(stats[2])
    return {"lm_loss": total / tokens if tokens else None, "target_tokens": tokens, "nonfinite_batches": nonfinite,
            "num_samples": len(pairs)}


def write_predictions(path: Path, records: list[dict]) -> None:
    """JSONL, one line per sample: id, source, reference, prediction, primary expert, routing probabilities, metrics."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            row = {k: v for k, v in r.items() if k not in ("routing", "index")}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def functional_evaluation(data_path, records: list[dict], *, timeout_s: float = 10.0) -> dict:
    """Functional correctness (kernelcheck.functional) of the predictions of executable cases.

    Returns the harness's summary (compile rate, pass@1, counts, run stage) or {"status": ..., "reason": ...}
    saying why it did not run. The harness's own C++ reference check is a data check and is skipped here.
    """
    if not has_test_cases(data_path):
        return {"status": "not applicable", "reason": f"{data_path} has no executable tests"}
    predictions = {r["case_id"]: [r["prediction"]] for r in records if "case_id" in r}
    if not predictions:
        return {"status": "not applicable", "reason": "no evaluated pair maps to an executable case"}
    cases = [c for c in load_exec_cases(data_path) if c.id in predictions]
    report = evaluate_functional(cases, predictions, timeout_s=timeout_s, check_reference=False)
    summary = report.summary()
    summary["status"] = "ran"
    return summary


# ---------------------------------------------------------------------------------------------------------------
# mot-eval
# ---------------------------------------------------------------------------------------------------------------


def make_accelerator(args):
    from accelerate import Accelerator

    mp = args.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())


def run_evaluation(args) -> dict:
    acc = make_accelerator(args)
    out_dir = Path(args.output_dir)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args, acc)
    checkpoint = resolve_checkpoint(args.checkpoint_path) if args.checkpoint_path else None
    mot = build_model(args, acc.device, checkpoint=checkpoint, world_size=acc.num_processes)
    apply_length_limit(splits, mot, args.max_length, acc)
    pairs = splits.get(args.split)
    if args.max_samples:
        pairs = pairs[: args.max_samples]
    mode = "full" if args.use_mot_generate else "fast"
    say(f"evaluating {len(pairs)} pairs of split '{args.split}' ({mode} generation, checkpoint "
        f"{checkpoint or 'none: untrained MoT'})", acc)
    summary, records = evaluate_generation(
        mot, pairs, mode=mode, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
        compile_check=not args.no_compile_check, accelerator=acc, case_ids=splits.case_ids,
    )
    loss = evaluate_lm_loss(mot, pairs, batch_size=args.eval_batch_size, accelerator=acc) if pairs else None
    want_functional = args.functional == "on" or (args.functional == "auto" and splits.case_ids)
    functional = (functional_evaluation(args.data_path, records, timeout_s=args.functional_timeout)
                  if want_functional and acc.is_main_process
                  else {"status": "not run", "reason": "--functional off" if args.functional == "off"
                        else "the data has no executable tests"})
    result = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "preset": getattr(mot, "preset", None),
        "experts": mot.expert_names,
        "data_path": str(args.data_path),
        "split": args.split,
        **summary,
        "lm_loss": loss["lm_loss"] if loss else None,
        "functional": functional,
        "data": splits.summary(),
    }
    if acc.is_main_process:
        write_json(out_dir / "eval_results.json", result)
        if args.save_predictions:
            write_predictions(out_dir / "eval_predictions.jsonl", records)
        say(format_results(result), acc)
    return result


def format_results(result: dict) -> str:
    lines = [f"{result.get('split', '?')}: {result['num_samples']} samples, {result['generation_mode']} generation"]
    m = result.get("metrics") or {}
    for k in ("bleu", "chrf", "rouge_l", "exact_match", "edit_similarity", "syntax_validity"):
        if k in m:
            lines.append(f"  {k:<16}{m[k]:.4f}")
    cr = m.get("compile_rate")
    if isinstance(cr, dict):
        lines.append(f"  {'compile_rate':<16}" + (f"{cr['value']:.4f}" if cr.get("value") is not None else cr.get("status", "?")))
    if result.get("lm_loss") is not None:
        lines.append(f"  {'lm_loss':<16}{result['lm_loss']:.4f}")
    r = result.get("routing") or {}
    if r.get("samples"):
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["primary_share"].items())
        lines.append(f"  primary expert: {share}; mean router entropy {r['mean_router_entropy']:.3f} nats")
    f = result.get("functional")
    if isinstance(f, dict) and f.get("status") == "ran":
        lines.append(f"  functional: compile rate {f.get('compile_rate')}, pass@1 {f.get('pass@1')} "
                     f"(run stage: {f.get('run_stage')})")
    return "\n".join(lines)
