"""Fit the router's alone head: which expert fast mode runs alone, function by function.

Fast mode decodes one expert alone. The trained router picks the primary that does best *with* the interaction (the
pocket checkpoint: SmolLM2-135M for every function); alone, Gemma-3-270M's kernels verify more often. This script
fits `Router.alone` (a LayerNorm and a linear score per expert over the router's source embedding) to solo outcomes
(`python -m train.solo_outcomes`: whether each expert's kernel, decoded alone, verified against the C function) with
a binary cross-entropy per expert, and writes a copy of the checkpoint that has the head (`alone_head` in its
config; the head's tensors in float32). Fast mode then runs the expert the head ranks first.

How much the head may read the function is chosen by K-fold cross-validation on the outcomes alone (never on
evaluation data), repeated over a few shuffles: per weight decay, the functions whose chosen expert verified, per
held-out fold. A head that may only learn each expert's base rate (the prior: the same expert for every function) is
the simplest; the one-standard-error rule takes the strongest decay whose mean is within one standard error of the
best mean, so a head that reads the function is taken only where it wins by more than the folds' noise.

    python -m train.fast_primary --checkpoint mot_engine/presets/checkpoints/pocket \\
        --outcomes runs/solo/bt.jsonl runs/solo/synth.jsonl --out runs/solo/pocket-alone
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mot_engine.model.checkpoint import WEIGHTS, read_checkpoint_metadata
from mot_engine.model.router import make_alone_head

from .export_checkpoint import replace_checkpoint

PRIOR = "prior"  # the head may learn only a bias per expert: the same ranking for every function
DECAYS = (PRIOR, 1.0, 0.1, 0.01, 0.001)
STEPS = 300
REPEATS = 3  # shuffles of the K folds


def load_outcomes(paths: list[Path], experts: list[str]) -> tuple[list[str], torch.Tensor]:
    """(sources, labels (N, E): 1 where that expert's kernel alone verified), in the checkpoint's expert order."""
    sources, labels = [], []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            row = json.loads(line)
            if sorted(row["experts"]) != sorted(experts):
                raise ValueError(f"{path}:{number}: outcomes of experts {row['experts']}, the checkpoint has {experts}")
            status = dict(zip(row["experts"], row["statuses"]))
            sources.append(row["cpp"])
            labels.append([float(status[e] == "verified") for e in experts])
    if not sources:
        raise ValueError(f"no outcomes in {[str(p) for p in paths]}")
    return sources, torch.tensor(labels)


def fit(x: torch.Tensor, y: torch.Tensor, decay: float | str, seed: int = 0) -> torch.nn.Module:
    """The head fit to (x (N, D), y (N, E)): full-batch Adam on the BCE, `decay` the L2 weight (PRIOR: bias only)."""
    torch.manual_seed(seed)
    head = make_alone_head(x.shape[1], y.shape[1])
    linear = head[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.logit(y.mean(0).clamp(0.02, 0.98)))  # start at the prior
    params = [linear.bias] if decay == PRIOR else list(head.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x), y)
        if decay != PRIOR:
            loss = loss + decay * linear.weight.pow(2).sum()
        loss.backward()
        opt.step()
    return head.requires_grad_(False)


def chosen_verified(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """How many functions' chosen expert (the head's first) verified alone."""
    choice = head(x).argmax(-1)  # (N,)
    return float(y.gather(1, choice.unsqueeze(1)).sum())


def cross_validate(x: torch.Tensor, y: torch.Tensor, folds: int, repeats: int = REPEATS) -> dict:
    """Per decay: the functions whose chosen expert verified in each held-out fold (folds x repeats counts)."""
    scores = {decay: [] for decay in DECAYS}
    for seed in range(repeats):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        parts = [order[i::folds] for i in range(folds)]
        for i, held in enumerate(parts):
            train = torch.cat([p for j, p in enumerate(parts) if j != i])
            for decay in DECAYS:
                scores[decay].append(chosen_verified(fit(x[train], y[train], decay, seed), x[held], y[held]))
    return scores


def one_standard_error(scores: dict) -> float | str:
    """The strongest decay (DECAYS' order) whose mean fold score is within one standard error of the best mean."""
    means = {d: torch.tensor(s, dtype=torch.float64).mean().item() for d, s in scores.items()}
    best = max(means, key=means.get)
    spread = torch.tensor(scores[best], dtype=torch.float64)
    threshold = means[best] - (spread.std().item() / len(spread) ** 0.5 if len(spread) > 1 else 0.0)
    return next(d for d in DECAYS if d in means and means[d] >= threshold)


def write_checkpoint(source: Path, target: Path, head: torch.nn.Module, extra: dict) -> Path:
    """A copy of `source` with the head: its tensors in float32 beside the others, `alone_head` in the config."""
    meta = read_checkpoint_metadata(source)
    tensors = load_file(str(source / WEIGHTS))
    tensors = {k: v for k, v in tensors.items() if not k.startswith("router.alone.")}
    tensors.update({f"router.alone.{k}": v.float().contiguous() for k, v in head.state_dict().items()})
    meta["mot_config"]["alone_head"] = True
    meta["extra"] = {**meta.get("extra", {}), "fast_primary": extra}
    return replace_checkpoint(target, tensors, meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint to add the head to")
    p.add_argument("--outcomes", type=Path, nargs="+", required=True, help="train.solo_outcomes files")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write (may be --checkpoint)")
    p.add_argument("--folds", type=int, default=5)
    args = p.parse_args(argv)
    if args.folds < 2:
        p.error(f"--folds must be at least 2, got {args.folds}")

    from mot_engine import build_mot

    mot = build_mot(None, str(args.checkpoint), device="cpu")  # the router's own encoder, as inference runs it
    experts = list(mot.expert_names)
    sources, y = load_outcomes(args.outcomes, experts)
    with torch.no_grad():
        x = torch.cat([mot.encoder(sources[i:i + 32]).float() for i in range(0, len(sources), 32)])  # (N, D)
    scores = cross_validate(x, y, args.folds)
    best = one_standard_error(scores)
    head = fit(x, y, best)
    counts = head(x).argmax(-1).bincount(minlength=len(experts)).tolist()
    extra = {"functions": len(sources), "verified_alone": dict(zip(experts, y.sum(0).int().tolist())),
             "either_verified": int(y.max(1).values.sum()), "cross_validation": {str(d): sum(s) / REPEATS for d, s in scores.items()},
             "decay": best, "chosen": dict(zip(experts, counts)), "outcomes": [o.name for o in args.outcomes]}
    write_checkpoint(args.checkpoint, args.out, head, extra)
    print(f"{len(sources)} functions; verified alone: "
          + ", ".join(f"{e} {int(v)}" for e, v in zip(experts, y.sum(0))) + f"; either: {extra['either_verified']}")
    print(f"{args.folds}-fold cross-validation ({REPEATS} shuffles), functions whose chosen expert verified, of "
          f"{len(sources)} (mean over shuffles; one standard error of a fold):")
    for d in DECAYS:
        s = torch.tensor(scores[d], dtype=torch.float64)
        print(f"  decay {d!s:>6}: {s.sum().item() / REPEATS:5.1f}  (+-{s.std().item() / len(s) ** 0.5:.2f} a fold)"
              f"{'  <- chosen' if d == best else ''}")
    print("the head runs alone: " + ", ".join(f"{e} for {c}" for e, c in zip(experts, counts))
          + f" of the training functions; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
