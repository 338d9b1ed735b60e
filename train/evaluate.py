"""Evaluation of a MoT: generation and its metrics.

- `evaluate_generation` translates the sources (fast or full mode, greedy), scores them with train.metrics and
  collects routing statistics; `evaluate_lm_loss` is the teacher-forced loss. Both shard the pairs over the
  processes of an accelerate launch and gather the results.
- `functional_evaluation` runs the functional harness (kernelcheck.functional, pass@1) on the predictions of executable
  cases; `format_results` is the summary a person reads.

The data (train.splits) and the model (train.building) come from the callers: `mot-eval` (train.run_eval) and the
trainer.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from accelerate.utils import gather_object

from kernelcheck.cases import has_test_cases, load_exec_cases
from kernelcheck.extract import STATUSES, extract_kernel
from kernelcheck.functional import evaluate_functional
from mot_engine import GenerationRequest, Generator
from mot_engine.defaults import MODE

from .defaults import EVAL_BATCH_SIZE, EVAL_MAX_NEW_TOKENS, FUNCTIONAL_TIMEOUT_S
from .metrics import compute_metrics, sample_metrics
from .pairs import Pair

# Evaluation decodes greedily whatever the user-facing default (mot_engine.defaults.TEMPERATURE): its metrics must
# be a function of the model and the data only.
GREEDY = 0.0


def generation_mode(args) -> str:
    """The mode evaluations generate in: "full" with --use_mot_generate, else the default mode ("fast")."""
    return "full" if args.use_mot_generate else MODE


def _shard(items: list, accelerator) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    return list(items[accelerator.process_index :: accelerator.num_processes])


def _gather(items: list, accelerator) -> list:
    """Every process gets the items of all processes (callers restore the order)."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    return [item for part in gather_object([list(items)]) for item in part]


@torch.no_grad()
def generate(mot, sources: list[str], *, mode: str, max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy translations: [{"text", "routing", "finish_reason", "error"}], one per source, in order. `text` is the
    whole answer (the prompt format's answer prefix, the kernel's head, then what the model wrote).

    A request that fails (NaN/Inf logits, a prompt too long for a context) becomes an empty prediction with its
    error recorded; the others go on.
    """
    was_training = mot.training
    mot.eval()
    gen = Generator(mot, max_batch_size=batch_size)
    out: list[dict | None] = [None] * len(sources)
    for i, src in enumerate(sources):
        req = GenerationRequest(source=src, mode=mode, max_new_tokens=max_new_tokens, temperature=GREEDY)
        try:
            gen.add_request(str(i), req)
        except ValueError as e:
            out[i] = {"text": "", "routing": {}, "finish_reason": "error", "error": str(e)}
    while gen.has_unfinished():
        gen.step()
    for rid, res in gen.results.items():
        out[int(rid)] = {"text": res.answer, "routing": res.routing, "finish_reason": res.finish_reason,
                         "error": res.error}
    mot.train(was_training)
    return out  # type: ignore[return-value]


def _what_came_out(answer: str) -> dict:
    """The answer's status and kernel, as every surface extracts them."""
    extraction = extract_kernel(answer)
    return {"status": extraction.status, "kernel": extraction.code}


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
    mot, pairs: list[Pair], *, mode: str = MODE, max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    compile_check: bool = False, per_sample_metrics: bool = True, accelerator=None, case_ids: dict | None = None,
) -> tuple[dict, list[dict]]:
    """(summary, records) of greedy generation over `pairs`: corpus metrics, routing statistics, and one record
    per pair (source, reference, prediction, routing, sample metrics). Sharded over processes, gathered."""
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
            "prediction": o["text"],  # the model's answer (metrics compare it with the reference)
            **_what_came_out(o["text"]),
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
    summary["statuses"] = {k: sum(r["status"] == k for r in records) for k in STATUSES}
    summary["finish_reasons"] = {k: sum(r["finish_reason"] == k for r in records) for k in ("stop", "eos", "length", "error")}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary, records


@torch.no_grad()
def evaluate_lm_loss(mot, pairs: list[Pair], *, batch_size: int = EVAL_BATCH_SIZE, accelerator=None) -> dict:
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


def functional_evaluation(data_path, records: list[dict], *, timeout_s: float = FUNCTIONAL_TIMEOUT_S) -> dict:
    """Functional correctness (kernelcheck.functional) of the predictions of executable cases.

    Returns the harness's summary (compile rate, pass@1, counts, run stage) or {"status": ..., "reason": ...}
    saying why it did not run. The harness's own C++ reference check is a data check and is skipped here.
    """
    if not has_test_cases(data_path):
        return {"status": "not applicable", "reason": f"{data_path} has no executable tests"}
    # the kernel a user would get (kernelcheck.extract): an answer with no kernel is an empty candidate, which fails
    predictions = {r["case_id"]: [r["kernel"]] for r in records if "case_id" in r}
    if not predictions:
        return {"status": "not applicable", "reason": "no evaluated pair maps to an executable case"}
    cases = [c for c in load_exec_cases(data_path) if c.id in predictions]
    report = evaluate_functional(cases, predictions, timeout_s=timeout_s, check_reference=False)
    summary = report.summary()
    summary["status"] = "ran"
    return summary


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
