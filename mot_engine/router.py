"""Sentence encoder + router: which experts think about this source, and which one writes.

Selection is Gumbel top-k with the straight-through estimator: forward uses hard 0/1 weights (exactly 1.0 for the
selected experts, so a routed MoT computes exactly what its selected experts compute), backward uses the gradient
of softmax((logits + g) / tau). The weights multiply each expert's contribution to the interaction updates, so
the language-model loss reaches the router (the published implementation's router learned from auxiliary losses
only). Eval mode adds no noise: routing is a deterministic function of the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SentenceEncoder(nn.Module):
    """A sentence-transformers model used as a (by default frozen) mean-pooled source embedder."""

    def __init__(self, model, *, trainable: bool = False, max_length: int = 512, dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model  # sentence_transformers.SentenceTransformer (an nn.Sequential)
        self.trainable = trainable
        if dtype is None and not trainable and next(model.parameters()).device.type == "cuda":
            dtype = torch.bfloat16  # a frozen encoder on a GPU: half the latency of fp32 (the hover path)
        if dtype is not None:
            self.model.to(dtype)
        self.model.max_seq_length = min(max_length, getattr(self.model, "max_seq_length", max_length) or max_length)
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # frozen: no dropout, ever
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # `tokenize` is deprecated in ST 6
        features = prep(texts)
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            emb = self.model(features)["sentence_embedding"]  # (B, D)
        return emb.float()


@dataclass
class Routing:
    """Per-sample routing of a batch. E = number of experts, k = top_k."""

    logits: torch.Tensor  # (B, E) router scores without noise
    probs: torch.Tensor  # (B, E) softmax(logits): what we report as "routing probabilities"
    noisy_probs: torch.Tensor  # (B, E) softmax((logits + g) / tau); equals softmax(logits / tau) in eval
    active: torch.Tensor  # (B, k) long, selected experts by descending noisy score; column 0 is the primary
    weights: torch.Tensor  # (B, E) straight-through: exactly 1.0 on selected experts forward, soft gradients backward

    @property
    def primary(self) -> torch.Tensor:  # (B,)
        return self.active[:, 0]

    def select(self, rows: torch.Tensor | list[int]) -> "Routing":
        rows = torch.as_tensor(rows, device=self.logits.device, dtype=torch.long)
        return Routing(*(t.index_select(0, rows) for t in (self.logits, self.probs, self.noisy_probs, self.active, self.weights)))

    def info(self, b: int, expert_names: list[str] | None = None) -> dict:
        """The public routing dict of sample b (`get_routing_info`'s format)."""
        active = [int(e) for e in self.active[b].tolist()]
        out = {
            "primary_expert": active[0],
            "active_experts": active,
            "all_expert_probs": [float(p) for p in self.probs[b].tolist()],
        }
        if expert_names is not None:
            out["expert_names"] = list(expert_names)
        return out


class Router(nn.Module):
    """MLP over the source embedding -> one score per expert; Gumbel top-k selection."""

    def __init__(self, embed_dim: int, num_experts: int, hidden: int, top_k: int, tau: float, momentum: float = 0.9):
        super().__init__()
        self.num_experts, self.top_k, self.tau, self.momentum = num_experts, top_k, tau, momentum
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, num_experts)
        )
        # Running share of selections per expert, for the load-balancing loss at any batch size (see losses.py).
        self.register_buffer("selection_ema", torch.full((num_experts,), 1.0 / num_experts))

    def gumbel_probs(self, logits: torch.Tensor, noise: bool, generator: torch.Generator | None = None):
        """(scores, softmax(scores / tau)) with scores = logits + Gumbel noise (training) or logits (eval)."""
        if noise:
            u = torch.rand(logits.shape, device=logits.device, dtype=logits.dtype, generator=generator)
            neg_log_u = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)  # in (0, 46]
            g = -torch.log(neg_log_u)  # Gumbel(0, 1)
            scores = logits + g
        else:
            scores = logits
        return scores, F.softmax(scores / self.tau, dim=-1)

    def forward(
        self, emb: torch.Tensor, *, noise: bool | None = None, force_active: list[list[int]] | None = None
    ) -> Routing:
        noise = self.training if noise is None else noise
        logits = self.mlp(emb.float())  # (B, E)
        scores, soft = self.gumbel_probs(logits, noise)
        if force_active is not None:  # analysis and tests: choose the active set, keep the gradient path
            active = torch.tensor(force_active, device=logits.device, dtype=torch.long)
            if active.shape != (logits.shape[0], self.top_k):
                raise ValueError(f"force_active must be {logits.shape[0]} lists of top_k={self.top_k} experts, got {force_active}")
            if int(active.min()) < 0 or int(active.max()) >= self.num_experts:
                raise ValueError(f"force_active names an expert outside [0, {self.num_experts}): {force_active}")
        else:
            active = scores.topk(self.top_k, dim=-1).indices  # (B, k), sorted by score: column 0 = primary
        hard = torch.zeros_like(soft).scatter_(1, active, 1.0)
        weights = hard + (soft - soft.detach())  # exactly `hard` forward
        if self.training:
            with torch.no_grad():
                share = hard.sum(0) / hard.sum()
                self.selection_ema.mul_(self.momentum).add_((1 - self.momentum) * share)
        return Routing(logits=logits, probs=F.softmax(logits, dim=-1), noisy_probs=soft, active=active, weights=weights)
