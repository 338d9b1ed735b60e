"""The training loop: router + interaction layers of a MoT over frozen experts, with exact resume.

Design decisions (the report of issue 4 explains them at more length):

* Optimizer: AdamW over `mot.named_trainable_parameters()` only (never an expert weight), in groups by name prefix:
  `router.` at 2x the base learning rate, `interaction.` at 1x, anything else trainable (`encoder.` with
  --train_encoder) at 0.5x. Weight decay applies to matrices only (not biases, norms or the zero-initialised gates).
  Schedule: linear warm-up over --warmup_steps optimizer steps, then linear (or cosine) decay to 0 at the last step.
* Gradient accumulation: --gradient_accumulation_steps micro-batches per optimizer step; the windows restart at
  each epoch (the last one of an epoch may be shorter), so an epoch always ends on an optimizer step.
* Non-finite values: a micro-batch whose loss is NaN/Inf (MoTOutput.nonfinite) is not back-propagated and is
  counted (`nonfinite_losses`); an optimizer step whose gradient norm is NaN/Inf (or that has no gradient at all)
  is skipped and counted (`skipped_steps`). The schedule advances either way, so the data order and learning rates
  stay those of the uninterrupted plan. Nothing is replaced by zeros.
* Data parallel (accelerate launch): the MoT is NOT wrapped in DistributedDataParallel. Each process holds the frozen
  experts and the trainable layers; after each accumulation window the trainable gradients are averaged with one
  all-reduce of a flat buffer (plus a "had a gradient" flag per parameter, so a parameter that no process used this
  step keeps grad None, exactly as in a single process). Why not DDP: per-sample routing leaves some experts'
  interaction parameters unused on some ranks (DDP would need find_unused_parameters=True: an extra graph walk per
  backward and errors when usage differs between micro-steps); DDP would also broadcast every frozen expert weight
  and buffer at wrap time (gigabytes, and not possible for bitsandbytes 4-bit weights); accumulation would need
  no_sync. One explicit all-reduce per optimizer step is what DDP's no_sync + final sync amounts to, and it cannot
  touch a frozen weight. The router's running selection shares (balance loss) are averaged at the same time, and
  every checkpoint checks that all ranks hold identical trainable weights.
* Balance loss window: the engine's `Router.selection_ema`, a running average of selection shares (momentum
  `balance_momentum` = 0.9) updated at every training micro-batch and averaged over processes at every optimizer
  step, so the load-balancing loss is meaningful at batch size 1.
* Exact resume: a checkpoint is written at an optimizer-step boundary with the trainable weights and router
  statistics (model.safetensors, as the engine loads them), the optimizer state (optimizer.safetensors + JSON),
  the scheduler state (JSON), the position (epoch, micro-batch within it) and every process's RNG states (python,
  numpy, torch CPU and CUDA) — no pickle anywhere. The data order of an epoch is a function of (seed, epoch) only,
  and evaluation never consumes training randomness (RNG states are saved and restored around it), so a resumed
  run reproduces the uninterrupted run's loss curve exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import set_seed
from tqdm import tqdm

from mot_engine import load_checkpoint

from .building import build_model, make_accelerator, resolve_checkpoint
from .checkpointing import TrainerState, TrainingCheckpoints, data_fingerprint, latest_checkpoint
from .optim import LR_MULTIPLIERS, build_optimizer, build_scheduler
from .outputs import say, write_json
from .splits import apply_length_limit, load_splits
from .training_eval import TrainingEvaluation
from .training_log import AUX_LOSSES, LogWindow, MetricsLog


class Trainer(TrainingCheckpoints, TrainingEvaluation):
    """One training run (see the module docstring): `setup()`, then `train()`. Checkpoints and resume are in
    train.checkpointing, evaluation during the run in train.training_eval."""

    def __init__(self, args, *, mot=None, accelerator=None):
        self.args = args
        self.acc = accelerator or make_accelerator(args)
        self.out = Path(args.output_dir)
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.state = TrainerState(best_metric=args.best_model_metric)
        self._mot = mot
        self.log = MetricsLog(self.out, main=self.main)
        self.window = LogWindow()  # sums since the last metrics line; saved in checkpoints so logs resume exactly

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Data, model, optimizer and schedule; the resumed state with --resume; args.json and data_report.json."""
        args, acc = self.args, self.acc
        resume = None
        if args.resume:
            resume = latest_checkpoint(self.out) if args.resume == "latest" else Path(args.resume)
            if resume is None:
                raise FileNotFoundError(f"--resume: no checkpoint to continue from in {self.out}")
        init = resolve_checkpoint(args.checkpoint_path) if args.checkpoint_path else None
        self.splits = load_splits(args, acc)
        set_seed(args.seed)
        weights = resume or init
        if self._mot is None:
            self.mot = build_model(args, acc.device, checkpoint=weights, world_size=self.world)
        else:
            self.mot = self._mot
            if weights is not None:
                load_checkpoint(self.mot, weights)
        apply_length_limit(self.splits, self.mot, args.max_length, acc)
        self.train_pairs = self.splits.train
        if not self.train_pairs:
            raise ValueError(f"no training pairs left after the length policy (max_length={args.max_length}); "
                             "see data_report.json")
        if not self.splits.validation:
            say("warning: the validation split is empty: best_model/ will be the latest epoch's model", acc)
        self.params = [p for _, p in self.mot.named_trainable_parameters()]
        if self.world > 1:
            self._broadcast_trainable()
        self.optimizer = build_optimizer(self.mot, args.learning_rate, args.weight_decay)
        B, W, G = args.batch_size, self.world, args.gradient_accumulation_steps
        self.micro_per_epoch = math.ceil(len(self.train_pairs) / (B * W))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / G)
        self.total_steps = self.steps_per_epoch * args.num_epochs
        if args.warmup_steps >= self.total_steps:
            say(f"warning: --warmup_steps {args.warmup_steps} >= the run's {self.total_steps} optimizer steps: the "
                "learning rate never reaches its peak", acc)
        self.scheduler = build_scheduler(self.optimizer, args.warmup_steps, self.total_steps, args.lr_scheduler)
        self.fingerprint = data_fingerprint(self.train_pairs)
        if resume is not None:
            self._load_resume(resume)
        else:
            set_seed(args.seed, device_specific=True)  # router noise differs between processes
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "args.json", vars(args))
            write_json(self.out / "data_report.json", self.splits.summary())
        self.log.open(resumed_at_step=self.state.global_step if resume is not None else None)
        acc.wait_for_everyone()
        n_train = sum(p.numel() for p in self.params)
        say(f"training {n_train:,} parameters ({', '.join(self._group_sizes())}) of a MoT over "
            f"{', '.join(self.mot.expert_names)} on {acc.device} x{self.world}; {len(self.train_pairs)} pairs, "
            f"{self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all", acc)

    def _group_sizes(self) -> list[str]:
        sizes: dict[str, int] = {}
        for g in self.optimizer.param_groups:
            sizes[g["group"]] = sizes.get(g["group"], 0) + sum(p.numel() for p in g["params"])
        return [f"{k} {v:,} at {LR_MULTIPLIERS[k]:g}x lr" for k, v in sizes.items()]

    def _broadcast_trainable(self) -> None:
        with torch.no_grad():
            for t in self.params + [self.mot.router.selection_ema]:
                dist.broadcast(t.data, src=0)

    # ------------------------------------------------------------------ data order

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches of an epoch: a permutation seeded by (seed, epoch), cut into global
        micro-batches of batch_size x processes; process r takes its slice of each (possibly empty at the end)."""
        order = np.random.default_rng([self.args.seed, epoch]).permutation(len(self.train_pairs)).tolist()
        B, W, r = self.args.batch_size, self.world, self.rank
        return [order[s : s + B * W][r * B : (r + 1) * B] for s in range(0, len(order), B * W)]

    # ------------------------------------------------------------------ steps

    def micro_step(self, batch: list, scale: float, window: LogWindow) -> None:
        if not batch:
            return
        with self.acc.autocast():
            out = self.mot([p.source for p in batch], [p.target for p in batch])
        if out.nonfinite:
            window.nonfinite += 1
            return
        (out.loss * scale).backward()
        values = torch.stack([out.loss, out.lm_loss, *(out.aux[k] for k in AUX_LOSSES)]).detach().tolist()  # one sync
        for k, v in zip(("loss", "lm_loss", *AUX_LOSSES), values):
            setattr(window, k, getattr(window, k) + v)
        window.micro += 1
        window.tokens += out.num_target_tokens
        if not window.primary:
            window.primary = [0] * self.mot.num_experts
        for e in out.routing.primary.tolist():
            window.primary[e] += 1

    def _sync_gradients(self) -> None:
        """Mean of the trainable gradients over processes (one all-reduce); grad None where no process had one."""
        if self.world == 1:
            return
        dev = self.params[0].device
        flags = torch.tensor([float(p.grad is not None) for p in self.params], device=dev)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in self.params] + [flags])
        flat = self.acc.reduce(flat, reduction="sum")
        n = len(self.params)
        grads, used = flat[:-n] / self.world, flat[-n:].tolist()
        offset = 0
        for p, u in zip(self.params, used):
            k = p.numel()
            p.grad = grads[offset : offset + k].view_as(p).to(p.dtype) if u > 0 else None
            offset += k
        ema = self.mot.router.selection_ema
        ema.copy_(self.acc.reduce(ema.clone(), reduction="mean"))

    def optimizer_step(self, window: LogWindow) -> None:
        self._sync_gradients()
        with_grad = [p for p in self.params if p.grad is not None]
        if with_grad:
            clip = self.args.gradient_clip if self.args.gradient_clip > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(with_grad, clip))
        else:
            norm = float("nan")
        if math.isfinite(norm):
            self.optimizer.step()
            window.grad_norm += norm
        else:
            window.skipped += 1
            self.state.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        window.steps += 1
        self.state.global_step += 1

    # ------------------------------------------------------------------ run

    def train(self) -> dict:
        """The epochs (from the resumed position), with evaluation and checkpoints; the final test results."""
        args, st = self.args, self.state
        G = args.gradient_accumulation_steps
        bar = tqdm(total=self.total_steps, initial=st.global_step, disable=not self.main or args.no_progress,
                   unit="step", dynamic_ncols=True)
        self.last_log = {}
        stopped = False
        t_start = time.perf_counter()
        self.mot.train()
        while st.epoch < args.num_epochs and not stopped:
            batches = self.epoch_batches(st.epoch)
            while st.micro_step < len(batches) and not stopped:
                span = batches[st.micro_step : st.micro_step + G]
                for idx in span:
                    self.micro_step([self.train_pairs[i] for i in idx], 1.0 / len(span), self.window)
                st.micro_step += len(span)
                self.optimizer_step(self.window)
                epoch_done = st.micro_step >= len(batches)
                if st.global_step % args.logging_steps == 0 or epoch_done:
                    self._log_train(self.window, time.perf_counter() - t_start)
                    self.window = LogWindow()
                bar.update(1)
                bar.set_postfix(self._postfix(), refresh=False)
                if epoch_done:
                    break  # the epoch's end evaluates and saves
                with self._not_training_time():
                    if args.eval_steps and st.global_step % args.eval_steps == 0:
                        self._eval_loss()
                    stopped = bool(args.stop_after_steps and st.global_step >= args.stop_after_steps)
                    if stopped or (args.save_steps and st.global_step % args.save_steps == 0):
                        self.save_checkpoint(time.perf_counter() - t_start)
            if stopped:
                break
            with self._not_training_time():
                self._eval_loss()
                self._epoch_end_generation()
                st.epoch += 1
                st.micro_step = 0
                self.save_checkpoint(time.perf_counter() - t_start)
            stopped = bool(args.stop_after_steps and st.global_step >= args.stop_after_steps
                           and st.epoch < args.num_epochs)
        bar.close()
        st.train_seconds += time.perf_counter() - t_start
        result = {"status": "stopped" if stopped else "finished", "global_step": st.global_step,
                  "state": asdict(st), "last_log": self.last_log}
        if not stopped:
            result["final_results"] = self.final_evaluation()
        self.log.close()
        return result

    @contextlib.contextmanager
    def _not_training_time(self):
        """Evaluation and checkpoints do not count in the tokens/s of the next metrics line."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.window.t0 += time.perf_counter() - t

    def _base_lr(self) -> float:
        """The base learning rate now (the interaction layers'; router x2, auxiliary x0.5)."""
        g = self.optimizer.param_groups[0]
        return g["lr"] / LR_MULTIPLIERS[g["group"]]

    def _postfix(self) -> dict:
        out = {"lr": f"{self._base_lr():.2e}"}
        if self.last_log.get("loss") is not None:
            out["loss"] = f"{self.last_log['loss']:.4f}"
        if self.last_log.get("tokens_per_s") is not None:
            out["tok/s"] = f"{self.last_log['tokens_per_s']:.0f}"
        return out

    # ------------------------------------------------------------------ logs

    def _reduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(t, reduction="sum").tolist()

    def _log_train(self, w: LogWindow, elapsed: float) -> None:
        E = self.mot.num_experts
        primary = w.primary or [0] * E
        sums = self._reduce([w.loss, w.lm_loss, w.entropy, w.balance, w.consistency, w.micro, w.tokens,
                             w.nonfinite, *primary])
        loss, lm, ent, bal, cons, micro, tokens, nonfinite = sums[:8]
        prim = sums[8:]
        self.state.nonfinite_losses += int(nonfinite)
        self.state.target_tokens += int(tokens)
        seconds = time.perf_counter() - w.t0
        row = {
            "type": "train",
            "step": self.state.global_step,
            "epoch": self._epoch_progress(),
            "loss": loss / micro if micro else None,
            "lm_loss": lm / micro if micro else None,
            "entropy": ent / micro if micro else None,
            "balance": bal / micro if micro else None,
            "consistency": cons / micro if micro else None,
            "grad_norm": w.grad_norm / max(1, w.steps - w.skipped) if w.steps > w.skipped else None,
            "lr": self._base_lr(),
            "lr_groups": {g["group"]: g["lr"] for g in self.optimizer.param_groups},
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
            "target_tokens": int(tokens),
            "primary_share": {n: prim[e] / sum(prim) if sum(prim) else None for e, n in enumerate(self.mot.expert_names)},
            "nonfinite_losses": self.state.nonfinite_losses,
            "skipped_steps": self.state.skipped_steps,
            "elapsed_s": round(self.state.train_seconds + elapsed, 3),
        }
        if torch.cuda.is_available():
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.acc.device) / 2**30
        if int(nonfinite) or w.skipped:
            say(f"step {row['step']}: {int(nonfinite)} micro-batch(es) with a NaN/Inf loss skipped, {w.skipped} "
                f"optimizer step(s) skipped for a NaN/Inf gradient (totals {self.state.nonfinite_losses} / "
                f"{self.state.skipped_steps})", self.acc)
        self.last_log = row
        self.log.write(row)

    def _epoch_progress(self) -> float:
        return round(self.state.epoch + self.state.micro_step / max(1, self.micro_per_epoch), 4)


def run_training(args, *, mot=None, accelerator=None) -> dict:
    """mot-train with parsed arguments (train.cli): set up, train, evaluate; the result of `Trainer.train`."""
    trainer = Trainer(args, mot=mot, accelerator=accelerator)
    trainer.setup()
    result = trainer.train()
    if accelerator is None:
        # Our accelerator: its process group ends with the run. Left to the interpreter's exit, a data-parallel
        # rank's gloo threads can still be running and abort it ("terminate called without an active exception",
        # SIGABRT after the run had finished; seen once in CI).
        trainer.acc.end_training()
    return result
