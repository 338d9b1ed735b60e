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
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .evaluate import (
    apply_length_limit, build_model, evaluate_generation, evaluate_lm_loss, load_splits, make_accelerator,
    resolve_checkpoint, say, write_json, write_predictions,
)

LR_MULTIPLIERS = {"router": 2.0, "interaction": 1.0, "auxiliary": 0.5}
OPTIMIZER_STATE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
SCHEDULER_STATE = "scheduler.json"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
BEST_DIR = "best_model"
METRICS_LOG = "metrics.jsonl"
# Arguments a resumed run must share with the run it continues (else it would not be the same run).
RESUME_MUST_MATCH = (
    "seed", "train_ratio", "test_ratio", "max_length", "batch_size", "gradient_accumulation_steps", "learning_rate",
    "weight_decay", "warmup_steps", "lr_scheduler", "gradient_clip", "train_encoder", "lambda_consistency",
    "preset", "experts",
)


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------


def parameter_group(name: str) -> str:
    if name.startswith("router."):
        return "router"
    if name.startswith("interaction."):
        return "interaction"
    return "auxiliary"


def build_optimizer(mot, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: router 2x, interaction 1x, auxiliary 0.5x the base learning rate."""
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in mot.named_trainable_parameters():
        decay = weight_decay > 0 and p.ndim >= 2
        buckets.setdefault((parameter_group(name), decay), []).append((name, p))
    groups = []
    for group, mult in LR_MULTIPLIERS.items():
        for decay in (True, False):
            items = buckets.get((group, decay))
            if items:
                groups.append({
                    "params": [p for _, p in items], "param_names": [n for n, _ in items], "group": group,
                    "lr": learning_rate * mult, "weight_decay": weight_decay if decay else 0.0,
                })
    if not groups:
        raise ValueError("the MoT has no trainable parameters")
    return torch.optim.AdamW(groups, lr=learning_rate)


def lr_factor(step: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Multiplier of the base learning rates for optimizer step `step` (0-based): warm-up, then decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer, warmup: int, total: int, kind: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, kind))


# ---------------------------------------------------------------------------------------------------------------
# State files (safetensors + JSON, never pickle)
# ---------------------------------------------------------------------------------------------------------------


def save_optimizer(optimizer, directory: Path) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    save_file(tensors, str(directory / OPTIMIZER_STATE))
    write_json(directory / OPTIMIZER_META, {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(optimizer, directory: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((directory / OPTIMIZER_META).read_text())
    mine = [g.get("param_names") for g in optimizer.param_groups]
    theirs = [g.get("param_names") for g in meta["param_groups"]]
    if mine != theirs:
        raise ValueError(f"{directory}: the optimizer's parameter groups differ from this model's "
                         f"(checkpoint groups {[g.get('group') for g in meta['param_groups']]})")
    state: dict[int, dict] = {}
    for key, value in load_file(str(directory / OPTIMIZER_STATE)).items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, st, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    npst["state"]["key"] = npst["state"]["key"].tolist()
    return tensors, {"python": [version, list(st), gauss], "numpy": npst}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, st, gauss = meta["python"]
    random.setstate((version, tuple(st), gauss))
    npst = meta["numpy"]
    npst["state"]["key"] = np.asarray(npst["state"]["key"], dtype=np.uint32)
    np.random.set_state(npst)


@contextlib.contextmanager
def preserved_rng():
    """Evaluation inside never changes the training run's random streams."""
    tensors, meta = rng_state()
    try:
        yield
    finally:
        set_rng_state(tensors, json.loads(json.dumps(meta)))


def latest_checkpoint(output_dir) -> Path | None:
    found = []
    for d in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = d.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and (d / TRAINER_STATE).is_file():
            found.append((int(step), d))
    return max(found)[1] if found else None


def data_fingerprint(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.origin, p.source, p.target]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    micro_step: int = 0  # micro-batches of `epoch` already consumed (always at a window boundary)
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    nonfinite_losses: int = 0  # micro-batches with a NaN/Inf loss, not back-propagated
    skipped_steps: int = 0  # optimizer steps skipped for a NaN/Inf gradient norm (or no gradient at all)
    target_tokens: int = 0
    train_seconds: float = 0.0


_AUX = ("entropy", "balance", "consistency")


@dataclass
class _Window:
    """Sums over the micro-batches since the last metrics line (this process only)."""

    loss: float = 0.0
    lm_loss: float = 0.0
    entropy: float = 0.0
    balance: float = 0.0
    consistency: float = 0.0
    micro: int = 0
    tokens: int = 0
    nonfinite: int = 0
    steps: int = 0
    skipped: int = 0
    grad_norm: float = 0.0
    primary: list[int] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)


class Trainer:
    def __init__(self, args, *, mot=None, accelerator=None):
        self.args = args
        self.acc = accelerator or make_accelerator(args)
        self.out = Path(args.output_dir)
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.state = TrainerState(best_metric=args.best_model_metric)
        self._mot = mot
        self.writer = None
        self.window = _Window()  # sums since the last metrics line; saved in checkpoints so logs resume exactly

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        from accelerate.utils import set_seed

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
                from mot_engine import load_checkpoint

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
            if resume is not None:
                self._truncate_log(self.state.global_step)
            self._open_tensorboard()
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
        import torch.distributed as dist

        with torch.no_grad():
            for t in self.params + [self.mot.router.selection_ema]:
                dist.broadcast(t.data, src=0)

    def _load_resume(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        st = json.loads((ckpt / TRAINER_STATE).read_text())
        problems = []
        for key in RESUME_MUST_MATCH:
            if st["args"].get(key) != getattr(self.args, key, None):
                problems.append(f"--{key} was {st['args'].get(key)!r}, now {getattr(self.args, key, None)!r}")
        if st["world_size"] != self.world:
            problems.append(f"{st['world_size']} processes then, {self.world} now")
        if st["data_fingerprint"] != self.fingerprint:
            problems.append("the training split differs (other data, ratios, seed or max_length)")
        if problems:
            raise ValueError(f"--resume {ckpt}: not the same run: " + "; ".join(problems))
        if st["args"].get("num_epochs") != self.args.num_epochs:
            say(f"note: --num_epochs changed from {st['args'].get('num_epochs')} to {self.args.num_epochs}: the "
                "learning-rate schedule is stretched, so this is not an exact continuation", self.acc)
        load_optimizer(self.optimizer, ckpt)
        self.scheduler.load_state_dict(json.loads((ckpt / SCHEDULER_STATE).read_text()))
        self.state = TrainerState(**st["state"])
        tensors = load_file(str(ckpt / f"rng_state_{self.rank}.safetensors"))
        meta = json.loads((ckpt / f"rng_state_{self.rank}.json").read_text())
        set_rng_state(tensors, meta)
        window = dict(meta["log_window"])
        seconds = window.pop("seconds")
        self.window = _Window(**window, t0=time.perf_counter() - seconds)
        # best_model/ of the run being continued, when this run writes elsewhere
        src_best, dst_best = ckpt.parent / BEST_DIR, self.out / BEST_DIR
        if self.main and self.state.best_step is not None and src_best.is_dir() and not dst_best.exists():
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src_best, dst_best)
        say(f"resumed from {ckpt}: step {self.state.global_step}, epoch {self.state.epoch}, "
            f"micro-batch {self.state.micro_step} of {self.micro_per_epoch}", self.acc)

    # ------------------------------------------------------------------ data order

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches of an epoch: a permutation seeded by (seed, epoch), cut into global
        micro-batches of batch_size x processes; process r takes its slice of each (possibly empty at the end)."""
        order = np.random.default_rng([self.args.seed, epoch]).permutation(len(self.train_pairs)).tolist()
        B, W, r = self.args.batch_size, self.world, self.rank
        return [order[s : s + B * W][r * B : (r + 1) * B] for s in range(0, len(order), B * W)]

    # ------------------------------------------------------------------ steps

    def micro_step(self, batch: list, scale: float, window: _Window) -> None:
        if not batch:
            return
        with self.acc.autocast():
            out = self.mot([p.source for p in batch], [p.target for p in batch])
        if out.nonfinite:
            window.nonfinite += 1
            return
        (out.loss * scale).backward()
        values = torch.stack([out.loss, out.lm_loss, *(out.aux[k] for k in _AUX)]).detach().tolist()  # one sync
        for k, v in zip(("loss", "lm_loss", *_AUX), values):
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

    def optimizer_step(self, window: _Window) -> None:
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
        from tqdm import tqdm

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
                    self.window = _Window()
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
        if self.writer is not None:
            self.writer.close()
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

    def _log_train(self, w: _Window, elapsed: float) -> None:
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
        self._write_log(row)

    def _epoch_progress(self) -> float:
        return round(self.state.epoch + self.state.micro_step / max(1, self.micro_per_epoch), 4)

    def _write_log(self, row: dict) -> None:
        if not self.main:
            return
        with open(self.out / METRICS_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            prefix = row["type"]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, row["step"])
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.writer.add_scalar(f"{prefix}/{k}/{kk}", vv, row["step"])

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: metrics.jsonl has everything
            return
        self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _truncate_log(self, step: int) -> None:
        """A resumed run continues the metrics log of the run it continues: later lines are dropped."""
        path = self.out / METRICS_LOG
        if not path.exists():
            return
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        kept.append(json.dumps({"type": "resume", "step": step}))
        path.write_text("\n".join(kept) + "\n")

    # ------------------------------------------------------------------ evaluation during training

    def _eval_loss(self) -> None:
        if not self.splits.validation:
            return
        with preserved_rng():
            res = evaluate_lm_loss(self.mot, self.splits.validation, batch_size=self.args.eval_batch_size,
                                   accelerator=self.acc)
        row = {"type": "eval_loss", "step": self.state.global_step, "epoch": self._epoch_progress(),
               "val_lm_loss": res["lm_loss"], "val_target_tokens": res["target_tokens"],
               "val_nonfinite_batches": res["nonfinite_batches"]}
        self._write_log(row)
        if res["lm_loss"] is not None:
            say(f"step {row['step']}: validation LM loss {res['lm_loss']:.4f}", self.acc)

    def _epoch_end_generation(self) -> None:
        args, st = self.args, self.state
        val = self.splits.validation[: args.eval_max_samples or None]
        if not val:
            self._save_best(None, [], None)
            return
        mode = "full" if args.use_mot_generate else "fast"
        with preserved_rng():
            summary, records = evaluate_generation(
                self.mot, val, mode=mode, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                compile_check=False, per_sample_metrics=False, accelerator=self.acc,
            )
        metrics = summary["metrics"]
        value = metrics[args.best_model_metric]
        improved = st.best_value is None or value > st.best_value  # all selectable metrics: higher is better
        row = {"type": "eval_generation", "step": st.global_step, "epoch": st.epoch + 1, "split": "validation",
               "num_samples": summary["num_samples"], "generation_mode": mode,
               **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
               "mean_router_entropy": summary["routing"]["mean_router_entropy"],
               "primary_share": summary["routing"]["primary_share"], "is_best": improved}
        self._write_log(row)
        say(f"epoch {st.epoch + 1}: validation {args.best_model_metric} {value:.4f} on {len(val)} pairs"
            + (" (best so far)" if improved else f" (best {st.best_value:.4f} at step {st.best_step})"), self.acc)
        if improved:
            self._save_best(value, records, {**metrics, "num_samples": summary["num_samples"], "generation_mode": mode})

    def _save_best(self, value, records, metrics) -> None:
        from mot_engine import save_checkpoint

        st = self.state
        st.best_value, st.best_step, st.best_epoch = value, st.global_step, st.epoch + 1
        if not self.main:
            return
        tmp = self.out / f".{BEST_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        metric = {"name": self.args.best_model_metric, "value": value, "split": "validation", "all": metrics}
        save_checkpoint(self.mot, tmp, preset=self.mot.preset, step=st.global_step, epoch=st.epoch + 1, metric=metric,
                        extra={"kind": "best_model", "selected_by": self.args.best_model_metric})
        if records:
            write_predictions(tmp / "validation_predictions.jsonl", records)
        _replace_dir(tmp, self.out / BEST_DIR)

    # ------------------------------------------------------------------ checkpoints

    def _check_ranks_in_sync(self) -> None:
        if self.world == 1:
            return
        sums = torch.stack([p.detach().double().sum() for p in self.params]).to(self.acc.device)
        every = self.acc.gather(sums).view(self.world, -1)
        if not bool((every == every[0]).all()):
            raise RuntimeError("the processes' trainable weights diverged; refusing to write a checkpoint")

    def save_checkpoint(self, elapsed: float) -> Path:
        from mot_engine import save_checkpoint
        from safetensors.torch import save_file

        st = self.state
        self._check_ranks_in_sync()
        final = self.out / f"{CHECKPOINT_PREFIX}{st.global_step}"
        tmp = self.out / f".{CHECKPOINT_PREFIX}{st.global_step}.tmp"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            state = asdict(st)
            state["train_seconds"] = st.train_seconds + elapsed
            save_checkpoint(self.mot, tmp, preset=self.mot.preset, step=st.global_step, epoch=self._epoch_progress(),
                            extra={"kind": "training"})
            save_optimizer(self.optimizer, tmp)
            write_json(tmp / SCHEDULER_STATE, self.scheduler.state_dict())
            write_json(tmp / TRAINER_STATE, {
                "state": state, "world_size": self.world, "micro_per_epoch": self.micro_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "data_fingerprint": self.fingerprint, "args": vars(self.args),
            })
        self.acc.wait_for_everyone()
        tensors, meta = rng_state()
        meta["log_window"] = {**{k: v for k, v in asdict(self.window).items() if k != "t0"},
                              "seconds": time.perf_counter() - self.window.t0}
        save_file(tensors, str(tmp / f"rng_state_{self.rank}.safetensors"))
        write_json(tmp / f"rng_state_{self.rank}.json", meta)
        self.acc.wait_for_everyone()
        if self.main:
            _replace_dir(tmp, final)
            self._prune_checkpoints()
        self.acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        ckpts = sorted((int(d.name[len(CHECKPOINT_PREFIX):]), d) for d in self.out.glob(f"{CHECKPOINT_PREFIX}*")
                       if d.name[len(CHECKPOINT_PREFIX):].isdigit())
        for _, d in ckpts[:-limit]:
            shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ the end

    def final_evaluation(self) -> dict:
        """Test-set results of the last-epoch model and of best_model/ (final_results_*.json)."""
        from mot_engine import load_checkpoint

        args, st = self.args, self.state
        last = self._test_results("last_epoch", None)
        best_dir = self.out / BEST_DIR
        if st.best_step == st.global_step or not best_dir.is_dir():
            best = {**last, "model": "best_model", "checkpoint": str(best_dir),
                    "same_model_as": "final_results_last_epoch.json"}  # best_model/ is the last epoch's model
            if args.save_predictions and self.main:
                shutil.copyfile(self.out / "predictions_last_epoch.jsonl", self.out / "predictions_best_model.jsonl")
        else:
            load_checkpoint(self.mot, best_dir)
            best = self._test_results("best_model", best_dir)
        if self.main:
            write_json(self.out / "final_results_last_epoch.json", last)
            write_json(self.out / "final_results_best_model.json", best)
        return {"last_epoch": last, "best_model": best}

    def _test_results(self, name: str, checkpoint) -> dict:
        args, st = self.args, self.state
        test = self.splits.test[: args.test_max_samples or None]
        mode = "full" if args.use_mot_generate else "fast"
        res: dict = {"model": name, "checkpoint": str(checkpoint) if checkpoint else None, "split": "test"}
        if test:
            summary, records = evaluate_generation(
                self.mot, test, mode=mode, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                compile_check=not args.no_compile_check, accelerator=self.acc, case_ids=self.splits.case_ids,
            )
            loss = evaluate_lm_loss(self.mot, test, batch_size=args.eval_batch_size, accelerator=self.acc)
            res.update(summary)
            res["lm_loss"] = loss["lm_loss"]
            if args.save_predictions and self.main:
                write_predictions(self.out / f"predictions_{name}.jsonl", records)
        else:
            res.update({"num_samples": 0, "metrics": None, "lm_loss": None, "generation_mode": mode,
                        "note": "the test split is empty (--test_ratio)"})
        res["best_model_metric"] = args.best_model_metric
        res["best_validation"] = {"value": st.best_value, "step": st.best_step, "epoch": st.best_epoch}
        res["training"] = {
            "global_step": st.global_step, "epochs": st.epoch, "total_steps": self.total_steps,
            "nonfinite_losses": st.nonfinite_losses, "skipped_steps": st.skipped_steps,
            "target_tokens": st.target_tokens, "train_seconds": round(st.train_seconds, 3),
            "final_train_loss": self.last_log.get("loss"), "world_size": self.world,
        }
        res["experts"] = self.mot.expert_names
        res["preset"] = self.mot.preset
        if self.main:
            from .evaluate import format_results

            say(f"{name}: " + format_results(res), self.acc)
        return res


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place (readers see the old or the new one, briefly neither)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def run_training(args, *, mot=None, accelerator=None) -> dict:
    trainer = Trainer(args, mot=mot, accelerator=accelerator)
    trainer.setup()
    result = trainer.train()
    if accelerator is None:
        # Our accelerator: its process group ends with the run. Left to the interpreter's exit, a data-parallel
        # rank's gloo threads can still be running and abort it ("terminate called without an active exception",
        # SIGABRT after the run had finished; seen once in CI).
        trainer.acc.end_training()
    return result
