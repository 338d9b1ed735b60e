"""The training loop on the tiny preset (CPU): overfitting a handful of pairs, the best checkpoint in the engine,
exact resume, NaN/Inf handling.

One tiny MoT is built for the module and its trainable state is reset before each run (the experts are frozen, so
that is the whole model state). A run built by the CLI itself is in test_train_outputs.py.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.cli import parse_train_args
from train.trainer import Trainer, run_training

OPS = [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"), ("max", ">"), ("min", "<")]
TYPES = ["float", "int"]


def pair(i: int) -> dict:
    name, op = OPS[i % len(OPS)]
    t = TYPES[(i // len(OPS)) % len(TYPES)]
    return {
        "cpp": f"void {name}_{t}({t}* a, const {t}* b, int n) {{ for (int i = 0; i < n; i++) a[i] = a[i] {op} b[i]; }}",
        "generated_cuda": f"__global__ void {name}_{t}({t}* a, const {t}* b, int n) {{ int i = blockIdx.x * blockDim.x + "
                          f"threadIdx.x; if (i < n) a[i] = a[i] {op} b[i]; }}",
    }


def write_data(path: Path, n: int, distinct: int | None = None) -> Path:
    distinct = distinct or n
    path.write_text("".join(json.dumps(pair(i % distinct)) + "\n" for i in range(n)))
    return path


def train_args(data: Path, out: Path, *extra: str):
    return parse_train_args([
        "--data_path", str(data), "--output_dir", str(out), "--preset", "tiny", "--batch_size", "1",
        "--learning_rate", "3e-3",
        "--warmup_steps", "2", "--max_new_tokens", "6", "--eval_max_samples", "1", "--test_max_samples", "1",
        "--eval_batch_size", "4", "--logging_steps", "1", "--no_progress", "--no_compile_check", *extra,
    ])


@pytest.fixture(scope="module")
def mot():
    """A tiny MoT with the trainer's default MoT options (num_stacks 4, top_k 2, lambda 0.05)."""
    from mot_engine import build_mot

    torch.manual_seed(0)  # the router's and interaction layers' initial weights, whatever ran before
    m = build_mot("tiny", device="cpu")
    m._initial = {k: v.clone() for k, v in m.trainable_state_dict().items()}
    return m


def reset(mot):
    params = dict(mot.named_parameters())
    with torch.no_grad():
        for name, value in mot._initial.items():
            (params[name] if name in params else mot.router.selection_ema).copy_(value)
    mot.train()
    return mot


def train_rows(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


# --------------------------------------------------------------------------------------------------------------
# Overfitting a handful of pairs: gradients reach the router and the interaction layers
# --------------------------------------------------------------------------------------------------------------


def test_overfits_four_pairs_and_best_checkpoint_reproduces_in_engine(tmp_path, mot):
    data = write_data(tmp_path / "four.jsonl", 128, distinct=4)  # 4 pairs, each 32 times: 120 train, 4 val, 4 test
    out = tmp_path / "run"
    args = train_args(data, out, "--train_ratio", "0.9375", "--test_ratio", "0.03125", "--num_epochs", "1",
                      "--gradient_accumulation_steps", "1", "--learning_rate", "1e-2", "--warmup_steps", "10",
                      "--eval_steps", "0", "--save_steps", "0", "--eval_max_samples", "2", "--max_new_tokens", "12",
                      "--use_mot_generate", "--best_model_metric", "chrf")
    reset(mot)
    result = run_training(args, mot=mot)
    assert result["status"] == "finished" and result["global_step"] == 120
    losses = [r["lm_loss"] for r in train_rows(out)]
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-20:])
    print(f"\ntiny overfit, lm_loss per 10 steps: {[round(statistics.mean(losses[i:i + 10]), 3) for i in range(0, 120, 10)]}")
    assert first > 4.0  # random experts: about ln(vocab)
    assert last < 0.25 * first, (first, last)
    # Both the router and the interaction layers moved, the gates included (identity at init: all zero).
    now = mot.trainable_state_dict()
    for prefix in ("router.mlp.", "interaction.0.q_proj.", "interaction.3.out.", "interaction.1.gate."):
        changed = [k for k in now if k.startswith(prefix) and not torch.equal(now[k], mot._initial[k])]
        assert changed, prefix
    # The LM loss alone (no auxiliary term) sends a gradient into the router through the trained interaction
    # weights. Checked with the initial router: at this learning rate the trained router saturates (softmax exactly
    # 0/1 in float32 within ~10 steps), where the straight-through gradient is exactly zero.
    src, tgt = pair(0)["cpp"], pair(0)["generated_cuda"]
    trained_router = {k: v.clone() for k, v in mot.router.state_dict().items()}
    mot.router.load_state_dict({k[len("router."):]: v for k, v in mot._initial.items() if k.startswith("router.")})
    mot.zero_grad(set_to_none=True)
    mot([src], [tgt]).lm_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mot.router.mlp[3].parameters())
    mot.zero_grad(set_to_none=True)
    mot.router.load_state_dict(trained_router)

    # best_model/ (here the last step: one epoch) loads in the engine and gives identical outputs.
    from mot_engine import GenerationRequest, Generator, build_mot, read_checkpoint_metadata

    best = out / "best_model"
    meta = read_checkpoint_metadata(best)
    assert meta["preset"] == "tiny" and meta["step"] == 120 and meta["metric"]["name"] == "chrf"
    saved = [json.loads(line) for line in (best / "validation_predictions.jsonl").read_text().splitlines()]
    loaded = build_mot(checkpoint=best, device="cpu")
    reqs = [GenerationRequest(r["source"], mode="full", max_new_tokens=12) for r in saved]
    regenerated = Generator(loaded).generate(reqs)
    assert [r.text for r in regenerated] == [r["prediction"] for r in saved]
    assert [loaded.expert_names[r.routing["primary_expert"]] for r in regenerated] == [r["primary_expert"] for r in saved]
    mot.eval()
    with torch.no_grad():
        assert torch.equal(loaded.target_logits(src, tgt), mot.target_logits(src, tgt))
    # Trained interaction: full-mode generation now starts the memorised kernel.
    assert all(r["prediction"].startswith("__global__ void") for r in saved), [r["prediction"] for r in saved]


# --------------------------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------------------------

COMPARED = ("loss", "lm_loss", "entropy", "balance", "consistency", "grad_norm", "lr", "lr_groups", "target_tokens",
            "primary_share", "nonfinite_losses", "skipped_steps", "epoch", "step")


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, mot):
    data = write_data(tmp_path / "d.jsonl", 12)  # 6 train, 3 validation, 3 test
    common = ("--train_ratio", "0.5", "--test_ratio", "0.25", "--num_epochs", "2", "--gradient_accumulation_steps",
              "2", "--save_steps", "0", "--eval_steps", "2", "--logging_steps", "2")
    # 6 pairs, accumulation 2: 3 optimizer steps per epoch, 6 in all; metrics lines at steps 2, 3 (epoch end), 4, 6.
    # Interrupt at step 1 (mid-epoch, mid-line: the resumed line must still equal the uninterrupted one) and at step 4.
    full = tmp_path / "full"
    reset(mot)
    run_training(train_args(data, full, *common), mot=mot)
    for stop in ("1", "4"):
        part = tmp_path / f"part{stop}"
        reset(mot)
        assert run_training(train_args(data, part, *common, "--stop_after_steps", stop), mot=mot)["status"] == "stopped"
        assert (part / f"checkpoint-{stop}").is_dir() and not (part / "final_results_last_epoch.json").exists()
        reset(mot)  # the resumed run must not depend on what is in memory
        torch.manual_seed(999)  # ... nor on the RNG state it starts with
        res = run_training(train_args(data, part, *common, "--resume"), mot=mot)
        assert res["status"] == "finished" and res["global_step"] == 6
        a, b = train_rows(full), train_rows(part)
        assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 3, 4, 6]
        for ra, rb in zip(a, b):
            assert {k: ra[k] for k in COMPARED} == {k: rb[k] for k in COMPARED}, (stop, ra["step"])
        assert train_rows(full, "eval_loss") == train_rows(part, "eval_loss")
        assert train_rows(full, "eval_generation") == train_rows(part, "eval_generation")
        for name in ("model.safetensors", "optimizer.safetensors"):
            wa, wb = load_file(str(full / "checkpoint-6" / name)), load_file(str(part / "checkpoint-6" / name))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
        ra = json.loads((full / "final_results_best_model.json").read_text())
        rb = json.loads((part / "final_results_best_model.json").read_text())
        assert ra["metrics"] == rb["metrics"] and ra["lm_loss"] == rb["lm_loss"]

    # Another run's settings are refused, not silently mixed in.
    reset(mot)
    bad = train_args(data, tmp_path / "part4", *common, "--resume", "--learning_rate", "1e-3")
    with pytest.raises(ValueError, match="not the same run: --learning_rate was 0.003, now 0.001"):
        Trainer(bad, mot=mot).setup()


# --------------------------------------------------------------------------------------------------------------
# NaN / Inf
# --------------------------------------------------------------------------------------------------------------


def test_nonfinite_losses_and_gradients_are_skipped_and_counted(tmp_path, mot, monkeypatch):
    data = write_data(tmp_path / "d.jsonl", 6)
    out = tmp_path / "nan"
    # all pairs train (empty validation and test splits: best_model/ is the last epoch, results say so)
    args = train_args(data, out, "--train_ratio", "1.0", "--test_ratio", "0", "--num_epochs", "1",
                      "--gradient_accumulation_steps", "1")
    reset(mot)
    calls = {"forward": 0, "grad": 0}
    forward = mot.forward

    def forward_with_a_nan(*a, **k):  # the 2nd micro-batch's loss is NaN
        out = forward(*a, **k)
        calls["forward"] += 1
        if calls["forward"] == 2:
            out.loss = out.loss * float("nan")
            out.nonfinite = True
        return out

    def grad_with_an_inf(g):  # the 3rd backward (4th step: the 2nd had none) gives an Inf gradient
        calls["grad"] += 1
        return g * float("inf") if calls["grad"] == 3 else g

    monkeypatch.setattr(mot, "forward", forward_with_a_nan)
    handle = mot.router.mlp[1].weight.register_hook(grad_with_an_inf)
    try:
        before = {k: v.clone() for k, v in mot.trainable_state_dict().items()}
        result = run_training(args, mot=mot)
    finally:
        handle.remove()
    assert result["status"] == "finished" and result["global_step"] == 6
    st = result["state"]
    # step 2 had no finite micro-batch (nothing to apply), step 4 an Inf gradient: both optimizer steps skipped
    assert st["nonfinite_losses"] == 1 and st["skipped_steps"] == 2
    rows = train_rows(out)
    assert [r["nonfinite_losses"] for r in rows] == [0, 1, 1, 1, 1, 1]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert rows[1]["loss"] is None and rows[3]["grad_norm"] is None  # nothing to average / the step was skipped
    after = mot.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in after)  # the finite steps did train
    final = json.loads((out / "final_results_best_model.json").read_text())
    assert final["num_samples"] == 0 and "empty" in final["note"]
    assert final["training"]["nonfinite_losses"] == 1 and final["training"]["skipped_steps"] == 2
