"""Auxiliary router losses. L = L_lm + 0.01 L_entropy + 0.01 L_balance + lambda L_consistency (model.forward).

- L_entropy = -mean_b H(p_b): minimising it raises the entropy of each sample's routing distribution, which keeps
  the router exploring early in training.
- L_balance = E * sum_e f_e * P_e (Switch-Transformer form). P_e is the batch's mean routing probability of expert e
  (differentiable); f_e is a running average of the share of selections that went to expert e (the router's
  `selection_ema` buffer, momentum `balance_momentum`). A per-batch f is degenerate at batch size 1 (the chosen
  expert always looks overloaded); the running average makes the loss meaningful at any batch size. It equals 1 when
  routing is uniform and grows as one expert takes the load.
- L_consistency = symmetric KL between the routing distributions softmax((logits + g1) / tau) and
  softmax((logits + g2) / tau) of two independent Gumbel draws on the same source embedding. Only the router head is
  re-run (cheap): the experts are not involved. In eval mode (no noise) it is exactly zero.
"""

from __future__ import annotations

import torch

from mot_engine.model.router import Router, Routing


def routing_entropy(probs: torch.Tensor) -> torch.Tensor:  # (B, E) -> (B,)
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # (B, E) x2 -> scalar
    lp, lq = p.clamp_min(1e-12).log(), q.clamp_min(1e-12).log()
    return 0.5 * ((p * (lp - lq)).sum(-1) + (q * (lq - lp)).sum(-1)).mean()


def auxiliary_losses(router: Router, routing: Routing) -> dict[str, torch.Tensor]:
    E = routing.probs.shape[-1]
    entropy = -routing_entropy(routing.probs).mean()
    balance = E * (router.selection_ema.detach() * routing.probs.mean(0)).sum()
    if router.training:
        _, second = router.gumbel_probs(routing.logits, noise=True)
        consistency = symmetric_kl(routing.noisy_probs, second)
    else:
        consistency = torch.zeros((), device=routing.logits.device)
    return {"entropy": entropy, "balance": balance, "consistency": consistency}
