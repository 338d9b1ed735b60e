"""`mot-eval`: evaluate a checkpoint (or the untrained MoT) on a split of the data — eval_results.json
(+ eval_predictions.jsonl), and functional correctness (pass@1) where the data has executable tests."""

from __future__ import annotations

from pathlib import Path

from .building import build_model, make_accelerator, resolve_checkpoint
from .evaluate import evaluate_generation, evaluate_lm_loss, format_results, functional_evaluation, generation_mode
from .outputs import say, write_json, write_predictions
from .splits import apply_length_limit, load_splits


def run_evaluation(args) -> dict:
    """mot-eval with parsed arguments (train.cli); returns what eval_results.json holds."""
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
    mode = generation_mode(args)
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

