"""train.cli: every flag documented with its default, dashes == underscores, bad values refused before any model
loads; `python -m train` dispatch; the optimizer's learning-rate groups and the schedule."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train import cli
from train.cli import build_eval_parser, build_train_parser, parse_train_args

REPO = Path(__file__).resolve().parents[1]

# The original scripts' flags and their defaults (None: no default value, the help says so).
TRAIN_DEFAULTS = {
    "data_path": None, "train_ratio": 0.8, "test_ratio": 0.1, "batch_size": 1, "gradient_accumulation_steps": 8,
    "num_epochs": 3, "learning_rate": 5e-6, "max_length": 512, "max_new_tokens": 256, "num_stacks": 4, "top_k": 2,
    "lambda_consistency": 0.05, "best_model_metric": "bleu", "use_4bit": False, "use_8bit": False,
    "single_gpu": False, "output_dir": None, "seed": 42, "warmup_steps": 200, "gradient_clip": 0.3,
    "preset": None, "experts": None, "resume": None, "eval_max_samples": 100,
}
EVAL_FLAGS = ("checkpoint_path", "use_mot_generate", "save_predictions")


def _help_of(parser, dest: str) -> str:
    action = next(a for a in parser._actions if a.dest == dest)
    return action.help


def test_help_documents_every_flag_with_its_default():
    for parser in (build_train_parser(), build_eval_parser()):
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert re.search(r"\((default: [^)]*|required)\)$", action.help), (action.dest, action.help)
    train = build_train_parser()
    help_text = train.format_help()
    for dest, default in TRAIN_DEFAULTS.items():
        assert f"--{dest}" in help_text, dest
        if default not in (None, False):
            assert f"default: {default}" in _help_of(train, dest), (dest, _help_of(train, dest))
    evals = build_eval_parser().format_help()
    for dest in EVAL_FLAGS + tuple(TRAIN_DEFAULTS):
        assert f"--{dest}" in evals, dest


def test_defaults_and_dash_or_underscore(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"cpp": "int f();", "generated_cuda": "__global__ void f();"}) + "\n")
    base = ["--data_path", str(data), "--output_dir", str(tmp_path / "out"), "--preset", "tiny"]
    args = parse_train_args(base)
    for dest, default in TRAIN_DEFAULTS.items():
        if dest in ("data_path", "output_dir", "preset", "num_stacks", "top_k", "lambda_consistency"):
            continue  # given above / resolved later (the checkpoint's, else the documented default)
        assert getattr(args, dest) == default, dest
    dashed = parse_train_args(["--data-path", str(data), "--output-dir", str(tmp_path / "out"), "--preset", "tiny",
                               "--batch-size", "3",
                               "--gradient-accumulation-steps", "2", "--best-model-metric", "chrf"])
    under = parse_train_args(base + ["--batch_size", "3", "--gradient_accumulation_steps", "2",
                                     "--best_model_metric", "chrf"])
    assert vars(dashed) == vars(under)
    assert dashed.batch_size == 3 and dashed.best_model_metric == "chrf"


BAD = [
    (["--train_ratio", "1.5"], "--train_ratio must be in [0, 1]"),
    (["--train_ratio", "0.7", "--test_ratio", "0.4"], "--train_ratio + --test_ratio must be <= 1"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--learning_rate", "-1"], "--learning_rate must be > 0"),
    (["--learning_rate", "nan"], "--learning_rate must be > 0"),
    (["--gradient_clip", "-0.1"], "--gradient_clip must be >= 0"),
    (["--use_4bit", "--use_8bit"], "--use_4bit and --use_8bit exclude each other"),
    (["--best_model_metric", "accuracy"], "invalid choice: 'accuracy'"),
    (["--batch_size", "two"], "expected an integer, got 'two'"),
    (["--preset", "tiny", "--top_k", "4"], "--top_k 4 exceeds the 3 experts of preset 'tiny'"),
    (["--preset", "tiny", "--experts", "a,b"], "give --preset or --experts, not both"),
    (["--resume", "/nonexistent/checkpoint-3"], "not a training checkpoint"),
    (["--checkpoint_path", "/nonexistent/best_model"], "--checkpoint_path /nonexistent/best_model: no such file"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_values_are_refused_before_any_model_loads(tmp_path, monkeypatch, capsys, extra, message):
    import train.building

    def no_model(*a, **k):
        raise AssertionError("a model was loaded for bad arguments")

    monkeypatch.setattr(train.building, "build_model", no_model)
    monkeypatch.setattr("mot_engine.build_mot", no_model)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"cpp": "int f();", "generated_cuda": "__global__ void f();"}) + "\n")
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--data_path", str(data), "--output_dir", str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unavailable_preset_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    from mot_engine import PresetUnavailable

    def unavailable(name):
        raise PresetUnavailable(f"the {name} preset needs the packages x, y: run pip install '.[{name}]'")

    monkeypatch.setattr("mot_engine.presets.resolve.resolve_preset", unavailable)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"cpp": "int f();", "generated_cuda": "__global__ void f();"}) + "\n")
    with pytest.raises(SystemExit):
        cli.train_main(["--data_path", str(data), "--output_dir", str(tmp_path / "o"), "--preset", "pocket"])
    assert "the pocket preset needs the packages x, y: run pip install '.[pocket]'" in capsys.readouterr().err


def test_missing_data_and_quantization_without_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.train_main(["--data_path", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")])
    assert "missing.jsonl: no such file or directory" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.eval_main(["--data_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--use_4bit"])
        assert "--use_4bit needs a CUDA GPU" in capsys.readouterr().err


def test_python_m_train_dispatches_subcommands():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    top = subprocess.run([sys.executable, "-m", "train", "--help"], capture_output=True, text=True, env=env, cwd=REPO)
    assert top.returncode == 0 and "train" in top.stdout and "functional" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "train", "eval", "--help"], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert sub.returncode == 0 and "--checkpoint_path" in sub.stdout and "--use_mot_generate" in sub.stdout
    bad = subprocess.run([sys.executable, "-m", "train", "bogus"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2 and "unknown command 'bogus'" in bad.stderr
    if (REPO / "kernelcheck" / "cli.py").exists():
        fn = subprocess.run([sys.executable, "-m", "train", "functional", "--help"], capture_output=True, text=True,
                            env=env, cwd=REPO)
        assert fn.returncode == 0 and "--predictions" in fn.stdout


# ----------------------------------------------------------------------------------------------------------------
# optimizer groups and schedule
# ----------------------------------------------------------------------------------------------------------------


def test_learning_rate_groups(tiny_mot):
    from train.optim import build_optimizer

    opt = build_optimizer(tiny_mot, 1e-3, weight_decay=0.01)
    seen = {}
    for g in opt.param_groups:
        for name in g["param_names"]:
            seen[name] = (g["group"], g["lr"], g["weight_decay"])
    trainable = dict(tiny_mot.named_trainable_parameters())
    assert set(seen) == set(trainable)  # every trainable parameter, no expert weight
    for name, (group, lr, wd) in seen.items():
        expected = {"router.": ("router", 2e-3), "interaction.": ("interaction", 1e-3)}.get(name.split(".")[0] + ".",
                                                                                              ("auxiliary", 5e-4))
        assert (group, lr) == (expected[0], pytest.approx(expected[1])), name
        assert wd == (0.01 if trainable[name].ndim >= 2 else 0.0), name
    assert not any(n.startswith("experts.") for n in seen)


def test_schedule_warms_up_then_decays_to_zero():
    from train.optim import lr_factor

    assert [lr_factor(s, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    linear = [lr_factor(s, 4, 10) for s in range(4, 10)]
    assert linear[0] == 1.0 and all(a > b for a, b in zip(linear, linear[1:])) and linear[-1] > 0
    assert lr_factor(10, 4, 10) == 0.0
    cosine = [lr_factor(s, 0, 10, "cosine") for s in range(11)]
    assert cosine[0] == 1.0 and math.isclose(cosine[5], 0.5) and math.isclose(cosine[10], 0.0, abs_tol=1e-12)
