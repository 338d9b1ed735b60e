"""The files of a training checkpoint, beyond the model's own (mot_engine.save_checkpoint): the optimizer state,
the scheduler, the trainer's position and every process's RNG states — safetensors + JSON, never pickle — and the
folder handling (the newest checkpoint, atomic replacement, pruning), so that a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mot_engine import save_checkpoint as save_mot_checkpoint

from .outputs import say, write_json
from .training_log import LogWindow

OPTIMIZER_STATE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
SCHEDULER_STATE = "scheduler.json"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
BEST_DIR = "best_model"
# Arguments a resumed run must share with the run it continues (else it would not be the same run).
RESUME_MUST_MATCH = (
    "seed", "train_ratio", "test_ratio", "max_length", "batch_size", "gradient_accumulation_steps", "learning_rate",
    "weight_decay", "warmup_steps", "lr_scheduler", "gradient_clip", "train_encoder", "lambda_consistency",
    "preset", "experts",
)


def save_optimizer(optimizer, directory: Path) -> None:
    """The optimizer's tensors as optimizer.safetensors, its groups and scalars as optimizer.json."""
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
    """Load `save_optimizer`'s files; ValueError when the parameter groups are not this model's."""
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
    """(tensors, JSON-able) RNG states of torch (CPU and every GPU), python and numpy."""
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
    """The checkpoint-N folder of the highest N that holds a trainer state, or None."""
    found = []
    for d in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = d.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and (d / TRAINER_STATE).is_file():
            found.append((int(step), d))
    return max(found)[1] if found else None


def data_fingerprint(pairs) -> str:
    """A short hash of the pairs (origin, source, target), to tell a resumed run's data from another."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.origin, p.source, p.target]).encode())
    return h.hexdigest()[:16]


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place (readers see the old or the new one, briefly neither)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoint-N folders (keep 0: delete none)."""
    if not keep:
        return
    ckpts = sorted((int(d.name[len(CHECKPOINT_PREFIX):]), d) for d in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
                   if d.name[len(CHECKPOINT_PREFIX):].isdigit())
    for _, d in ckpts[:-keep]:
        shutil.rmtree(d, ignore_errors=True)


def resume_problems(saved: dict, args, world_size: int, fingerprint: str) -> list[str]:
    """Why the run saved in `saved` (trainer_state.json) is not the run these arguments describe ([]: it is)."""
    problems = []
    for key in RESUME_MUST_MATCH:
        if saved["args"].get(key) != getattr(args, key, None):
            problems.append(f"--{key} was {saved['args'].get(key)!r}, now {getattr(args, key, None)!r}")
    if saved["world_size"] != world_size:
        problems.append(f"{saved['world_size']} processes then, {world_size} now")
    if saved["data_fingerprint"] != fingerprint:
        problems.append("the training split differs (other data, ratios, seed or max_length)")
    return problems


def save_rng_files(directory: Path, rank: int, extra: dict) -> None:
    """This process's RNG states (+ `extra`, e.g. the metrics window) as rng_state_RANK.{safetensors,json}."""
    tensors, meta = rng_state()
    save_file(tensors, str(directory / f"rng_state_{rank}.safetensors"))
    write_json(directory / f"rng_state_{rank}.json", {**meta, **extra})


def load_rng_files(directory: Path, rank: int) -> dict:
    """Restore this process's RNG states from `save_rng_files`; returns the JSON part (with the extras)."""
    tensors = load_file(str(directory / f"rng_state_{rank}.safetensors"))
    meta = json.loads((directory / f"rng_state_{rank}.json").read_text())
    set_rng_state(tensors, meta)
    return meta


# ---------------------------------------------------------------------------------------------------------------
# The trainer's side
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where a run is (saved in trainer_state.json; a resumed run starts from it)."""

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


class TrainingCheckpoints:
    """Writing and resuming checkpoint-N/ folders. Mixed into train.trainer.Trainer (a seam of that class, kept
    apart to keep the loop readable); reads and sets the trainer's args, acc, mot, params, optimizer, scheduler,
    state, window, out, main, world, rank, fingerprint, micro_per_epoch, steps_per_epoch and total_steps."""

    def _check_ranks_in_sync(self) -> None:
        if self.world == 1:
            return
        sums = torch.stack([p.detach().double().sum() for p in self.params]).to(self.acc.device)
        every = self.acc.gather(sums).view(self.world, -1)
        if not bool((every == every[0]).all()):
            raise RuntimeError("the processes' trainable weights diverged; refusing to write a checkpoint")

    def save_checkpoint(self, elapsed: float) -> Path:
        """checkpoint-STEP/ with everything an exact resume needs; `elapsed`: training seconds of this session."""
        st = self.state
        self._check_ranks_in_sync()
        final = self.out / f"{CHECKPOINT_PREFIX}{st.global_step}"
        tmp = self.out / f".{CHECKPOINT_PREFIX}{st.global_step}.tmp"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            state = asdict(st)
            state["train_seconds"] = st.train_seconds + elapsed
            save_mot_checkpoint(self.mot, tmp, preset=self.mot.preset, step=st.global_step,
                                epoch=self._epoch_progress(), extra={"kind": "training"})
            save_optimizer(self.optimizer, tmp)
            write_json(tmp / SCHEDULER_STATE, self.scheduler.state_dict())
            write_json(tmp / TRAINER_STATE, {
                "state": state, "world_size": self.world, "micro_per_epoch": self.micro_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "data_fingerprint": self.fingerprint, "args": vars(self.args),
            })
        self.acc.wait_for_everyone()
        window = {**{k: v for k, v in asdict(self.window).items() if k != "t0"},
                  "seconds": time.perf_counter() - self.window.t0}
        save_rng_files(tmp, self.rank, {"log_window": window})
        self.acc.wait_for_everyone()
        if self.main:
            replace_dir(tmp, final)
            prune_checkpoints(self.out, self.args.save_total_limit)
        self.acc.wait_for_everyone()
        return final

    def _load_resume(self, ckpt: Path) -> None:
        saved = json.loads((ckpt / TRAINER_STATE).read_text())
        problems = resume_problems(saved, self.args, self.world, self.fingerprint)
        if problems:
            raise ValueError(f"--resume {ckpt}: not the same run: " + "; ".join(problems))
        if saved["args"].get("num_epochs") != self.args.num_epochs:
            say(f"note: --num_epochs changed from {saved['args'].get('num_epochs')} to {self.args.num_epochs}: the "
                "learning-rate schedule is stretched, so this is not an exact continuation", self.acc)
        load_optimizer(self.optimizer, ckpt)
        self.scheduler.load_state_dict(json.loads((ckpt / SCHEDULER_STATE).read_text()))
        self.state = TrainerState(**saved["state"])
        window = dict(load_rng_files(ckpt, self.rank)["log_window"])
        seconds = window.pop("seconds")
        self.window = LogWindow(**window, t0=time.perf_counter() - seconds)
        # best_model/ of the run being continued, when this run writes elsewhere
        src_best, dst_best = ckpt.parent / BEST_DIR, self.out / BEST_DIR
        if self.main and self.state.best_step is not None and src_best.is_dir() and not dst_best.exists():
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src_best, dst_best)
        say(f"resumed from {ckpt}: step {self.state.global_step}, epoch {self.state.epoch}, "
            f"micro-batch {self.state.micro_step} of {self.micro_per_epoch}", self.acc)
