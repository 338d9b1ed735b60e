"""Command lines of training and evaluation: `mot-train`, `mot-eval`, `python -m train {train,eval,functional}`.

Every flag is accepted with underscores or dashes (`--batch_size` == `--batch-size`); `--help` shows each default.
Bad values are rejected (train.cli_checks), all at once, with exit status 2 and before any model is loaded.

    mot-train --data_path pairs.jsonl --preset seed --output_dir runs/seed
    accelerate launch -m train train --data_path pairs.jsonl --preset seed --output_dir runs/seed   # data parallel
    mot-train --data_path pairs.jsonl --output_dir runs/seed --resume            # continue from the latest checkpoint
    mot-eval --checkpoint_path runs/seed/best_model --data_path pairs.jsonl --save_predictions --output_dir runs/eval
"""

from __future__ import annotations

import argparse
import os
import sys

from kernelcheck import cli as kernelcheck_cli
from mot_engine.model.prompts import FORMATS
from mot_engine.presets.names import PRESETS

from . import defaults
from .cli_checks import validate_args

SPLITS = ("test", "validation", "train", "all")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=38, width=118)


def _add(group, name: str, *, default=None, help: str, show_default=True, **kw):
    """Register `--name` and its dashed alias; the help text ends with the default (unless it says it itself)."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    if kw.get("action") == "store_true":
        default = False
        help = f"{help} (default: off)"
    elif show_default:
        help = f"{help} (default: {default})"
    group.add_argument(*flags, dest=name, default=default, help=help, **kw)


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def _common_flags(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    _add(data, "data_path", help="JSONL of {\"cpp\", \"generated_cuda\"} lines, a BabelTower cpp.X.tok/cuda.X.tok file, "
         "a folder of such pairs, or an executable BabelTower JSONL (exec_dev.jsonl) (required)", show_default=False)
    _add(data, "train_ratio", type=_float, default=defaults.TRAIN_RATIO,
         help="share of the pairs in the training split")
    _add(data, "test_ratio", type=_float, default=defaults.TEST_RATIO,
         help="share in the test split; validation gets the rest")
    _add(data, "seed", type=_int, default=defaults.SEED, help="seed of the split, the data order and the router noise")
    _add(data, "max_length", type=_int, default=defaults.MAX_LENGTH,
         help="longest prompt + target + EOS in tokens (longest tokenization among the experts); longer pairs are "
              "skipped in every split and counted in data_report.json, never truncated")
    _add(data, "source_field", default=None, help="JSONL field of the C/C++ source (default: 'cpp', or 'cpp_code' "
         "for an executable BabelTower file)", show_default=False)
    _add(data, "target_field", default=None, help="JSONL field of the CUDA target (default: 'generated_cuda', or "
         "'cuda_code' for an executable BabelTower file)", show_default=False)
    _add(data, "detokenize", action="store_true", help="JSONL text is space-tokenized (BabelTower): rebuild normal "
         "source; on by default for an executable BabelTower file")

    model = p.add_argument_group("model")
    _add(model, "preset", choices=PRESETS, default=None,
         help="expert set (default: the checkpoint's preset, else 'seed' when cached locally, else 'pocket')",
         show_default=False)
    _add(model, "experts", default=None,
         help="experts instead of a preset: comma-separated hub ids or folders, each optionally NAME=PATH, or a "
              "JSON file with a list of ExpertConfig objects (then also give --encoder) (default: none)", show_default=False)
    _add(model, "encoder", default=None, help="sentence-transformers encoder of the router, id or folder "
         "(default: the preset's)", show_default=False)
    _add(model, "num_stacks", type=_int, default=None,
         help=f"stacks per expert (default: {defaults.NUM_STACKS}, or the checkpoint's)", show_default=False)
    _add(model, "top_k", type=_int, default=None,
         help=f"active experts per source, primary included (default: {defaults.TOP_K}, or the checkpoint's)",
         show_default=False)
    _add(model, "lambda_consistency", type=_float, default=None,
         help=f"weight of the routing consistency loss (default: {defaults.LAMBDA_CONSISTENCY}, or the checkpoint's)",
         show_default=False)
    _add(model, "shared_dim", type=_int, default=None,
         help="width of the interaction layers' shared space; smaller trains faster and ships smaller (default: the "
         "smallest expert's hidden size, or the checkpoint's)", show_default=False)
    _add(model, "prompt_format", choices=tuple(FORMATS), default=None,
         help="the prompt format to train (and later translate) with; the checkpoint records it (default: the "
         "checkpoint's, else the preset's)", show_default=False)
    _add(model, "use_4bit", action="store_true", help="load the experts in 4-bit NF4 (bitsandbytes, CUDA only)")
    _add(model, "use_8bit", action="store_true", help="load the experts in 8-bit (bitsandbytes, CUDA only)")
    _add(model, "single_gpu", action="store_true",
         help="keep every expert on this process's GPU; without it a single process that sees several GPUs puts "
              "expert i on GPU i mod N (under accelerate launch each process always uses its own GPU)")
    _add(model, "dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
         help="expert weights' dtype; auto = bfloat16 on GPU, float32 on CPU")
    _add(model, "mixed_precision", choices=("auto", "no", "bf16"), default="auto",
         help="bf16 autocast of the forward passes; auto = bf16 on GPU, no on CPU (fp16 is not offered: it would "
              "need loss scaling)")

    gen = p.add_argument_group("generation and evaluation")
    _add(gen, "max_new_tokens", type=_int, default=defaults.EVAL_MAX_NEW_TOKENS,
         help="generated tokens per translation, at most")
    _add(gen, "use_mot_generate", action="store_true",
         help="full-MoT generation (the primary reads the secondaries at every stack); default: fast mode, the "
              "routed primary expert alone")
    _add(gen, "save_predictions", action="store_true",
         help="write per-sample predictions (JSONL: source, reference, prediction, routing, metrics)")
    _add(gen, "eval_batch_size", type=_int, default=defaults.EVAL_BATCH_SIZE,
         help="sources generated / scored together")
    _add(gen, "no_compile_check", action="store_true",
         help="skip the nvcc compile rate of the final evaluation (it is 'unavailable' anyway without nvcc)")

    run = p.add_argument_group("run")
    _add(run, "output_dir", default=None, help="where everything is written (required)", show_default=False)
    _add(run, "no_progress", action="store_true", help="no progress bar")


def _training_flags(p: argparse.ArgumentParser, *, ignored: bool = False) -> None:
    title = "training (accepted for compatibility with mot-train; evaluation ignores them)" if ignored else "training"
    g = p.add_argument_group(title)
    _add(g, "batch_size", type=_int, default=defaults.BATCH_SIZE, help="pairs per micro-batch and process")
    _add(g, "gradient_accumulation_steps", type=_int, default=defaults.GRADIENT_ACCUMULATION_STEPS,
         help="micro-batches per optimizer step")
    _add(g, "num_epochs", type=_int, default=defaults.NUM_EPOCHS, help="passes over the training split")
    _add(g, "learning_rate", type=_float, default=defaults.LEARNING_RATE,
         help="base learning rate: router x2, interaction layers x1, other trainable parts (encoder) x0.5")
    _add(g, "weight_decay", type=_float, default=defaults.WEIGHT_DECAY,
         help="AdamW weight decay of matrices (not biases, norms, gates)")
    _add(g, "warmup_steps", type=_int, default=defaults.WARMUP_STEPS, help="optimizer steps of linear warm-up")
    _add(g, "lr_scheduler", choices=defaults.LR_SCHEDULERS, default=defaults.LR_SCHEDULER,
         help="decay to 0 after the warm-up")
    _add(g, "gradient_clip", type=_float, default=defaults.GRADIENT_CLIP,
         help="max global gradient norm; 0 disables clipping")
    _add(g, "best_model_metric", choices=defaults.BEST_MODEL_METRICS, default=defaults.BEST_MODEL_METRIC,
         help="validation metric that picks best_model/")
    _add(g, "train_encoder", action="store_true", help="also train the router's sentence encoder (0.5x lr)")
    if not ignored:  # mot-eval has its own --checkpoint_path
        _add(g, "checkpoint_path", default=None, help="start from this checkpoint's router/interaction weights "
             "(a fresh optimizer and schedule; use --resume to continue a run) (default: none: fresh layers)",
             show_default=False)
    _add(g, "resume", nargs="?", const="latest", default=None,
         help="continue a run exactly: a checkpoint-N folder, or no value / 'latest' for the newest checkpoint in "
              "--output_dir (default: off)", show_default=False)
    _add(g, "eval_steps", type=_int, default=defaults.EVAL_STEPS,
         help="validation LM loss every N optimizer steps (also at each epoch end); 0: epoch ends only")
    _add(g, "eval_max_samples", type=_int, default=defaults.EVAL_MAX_SAMPLES,
         help="validation pairs generated at each epoch end for the metrics that pick best_model/; 0: all")
    _add(g, "test_max_samples", type=_int, default=defaults.TEST_MAX_SAMPLES,
         help="test pairs generated for final_results_*.json; 0: all")
    _add(g, "save_steps", type=_int, default=defaults.SAVE_STEPS,
         help="checkpoint every N optimizer steps (also at each "
         "epoch end); 0: epoch ends only")
    _add(g, "save_total_limit", type=_int, default=defaults.SAVE_TOTAL_LIMIT,
         help="keep only the newest N checkpoint-* folders; "
         "0: keep all")
    _add(g, "logging_steps", type=_int, default=defaults.LOGGING_STEPS,
         help="a metrics.jsonl line every N optimizer steps")
    _add(g, "stop_after_steps", type=_int, default=0,
         help="stop after this optimizer step with a checkpoint, as if interrupted (the schedule is unchanged; "
              "--resume continues); 0: run to the end")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mot-train", formatter_class=_Formatter,
        description="Train the router and interaction layers of a Mixture-of-Thoughts over frozen code LLMs "
                    "(C/C++ -> CUDA).",
        epilog="Outputs in --output_dir: args.json, data_report.json, metrics.jsonl, checkpoint-STEP/, best_model/, "
               "final_results_last_epoch.json, final_results_best_model.json (+ predictions_*.jsonl with "
               "--save_predictions). Data parallel: accelerate launch -m train train ...",
    )
    _common_flags(p)
    _training_flags(p)
    return p


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mot-eval", formatter_class=_Formatter,
        description="Evaluate a trained MoT checkpoint: BLEU-4, chrF, ROUGE-L, exact match, edit similarity, syntax "
                    "validity, nvcc compile rate, routing statistics, and functional correctness (pass@1) on "
                    "executable BabelTower data.",
        epilog="Writes OUTPUT_DIR/eval_results.json (+ eval_predictions.jsonl with --save_predictions). "
               "`mot-eval functional ...` runs the functional harness alone (python -m kernelcheck functional).",
    )
    g = p.add_argument_group("evaluation")
    _add(g, "checkpoint_path", default=None,
         help="checkpoint folder (best_model/, checkpoint-N/), a training output_dir (its best_model/ is used) or a "
              "legacy .pt state dict; without it the untrained MoT (= its routed experts alone) is evaluated "
              "(default: none)",
         show_default=False)
    _add(g, "split", choices=SPLITS, default="test",
         help="which split of --data_path (same ratios and seed as training), or all of it")
    _add(g, "max_samples", type=_int, default=0, help="evaluate only the first N pairs of the split; 0: all")
    _add(g, "functional", choices=("auto", "on", "off"), default="auto",
         help="functional correctness (nvcc build + run of the tests, pass@1) for executable BabelTower data; "
              "auto: when the data has tests")
    _add(g, "functional_timeout", type=_float, default=defaults.FUNCTIONAL_TIMEOUT_S,
         help="seconds per functional test run")
    _common_flags(p)
    _training_flags(p, ignored=True)
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None, mode: str) -> argparse.Namespace:
    """Parse, then report every invalid value at once (before any model loads)."""
    args = parser.parse_args(argv)
    errors = validate_args(args, mode=mode)
    if errors:
        parser.error("\n  " + "\n  ".join(errors))
    return args


def parse_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parse(build_train_parser(), argv, "train")


def parse_eval_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parse(build_eval_parser(), argv, "eval")


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers loads when a command runs, not for --help or an argument error (it takes seconds)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def train_main(argv: list[str] | None = None) -> int:
    args = parse_train_args(argv)
    _quiet_libraries()
    # The command's modules load when it runs: --help and argument errors answer without their imports (the
    # metrics' rouge-score -> nltk -> scipy alone take ~2 s).
    from .trainer import run_training

    result = run_training(args)
    return 0 if result.get("status") in ("finished", "stopped") else 1


def eval_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "functional":  # `mot-eval functional ...` == python -m kernelcheck functional ...
        return functional_main(argv[1:])
    args = parse_eval_args(argv)
    _quiet_libraries()
    from .run_eval import run_evaluation  # loaded when the command runs, as train_main's run_training

    run_evaluation(args)
    return 0


def functional_main(argv: list[str] | None = None) -> int:
    return kernelcheck_cli.functional_main(argv)


COMMANDS = {"train": train_main, "eval": eval_main, "functional": functional_main}


def main(argv: list[str] | None = None) -> int:
    """`python -m train {train,eval,functional} ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m train {train,eval,functional} [flags]   (each command has --help)\n"
              "  train       train the router and interaction layers (= mot-train)\n"
              "  eval        evaluate a checkpoint (= mot-eval)\n"
              "  functional  functional correctness of predictions on executable BabelTower data",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    return COMMANDS[argv[0]](argv[1:])
