"""Sentence encoder + router: which experts think about this source, and which one writes.

Selection is Gumbel top-k with the straight-through estimator: forward uses hard 0/1 weights (exactly 1.0 for the
selected experts, so a routed MoT computes exactly what its selected experts compute), backward uses the gradient
of softmax((logits + g) / tau). The weights multiply each expert's contribution to the interaction updates, so
the language-model loss reaches the router (the published implementation's router learned from auxiliary losses
only). Eval mode adds no noise: routing is a deterministic function of the source.

On CUDA a frozen encoder runs inference by CUDA-graph replay (`CapturedEncoder`): routing a hover is otherwise
bound by launching ~1000 small kernels from Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mot_engine.graph_capture import capture_or_explain

ENCODER_MIN_COLUMNS = 32
ENCODER_MAX_GRAPHS = 16  # (rows, columns) shapes captured at most; others run eagerly
ENCODER_MAX_ROWS = 8  # batches of routing requests larger than this run eagerly


def _pow2(n: int, minimum: int = 1) -> int:
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


def tokenize(model, texts: list[str]) -> dict:
    """A sentence-transformers model's features for texts (`tokenize` is deprecated in ST 6: `preprocess`)."""
    prep = getattr(model, "preprocess", None) or model.tokenize
    return prep(texts)


def pad_features(features: dict, rows: int, columns: int, pad_id: int) -> dict:
    """Tokenized features (B, L) padded to (rows, columns): extra columns are masked padding on the right, extra
    rows repeat row 0 (a valid input whose outputs the caller drops). Right padding keeps every real token's
    position, and a masked key is left out of every attention and pooling, so the first B rows embed as they do
    unpadded (for bidirectional encoders and causal ones alike, whatever side the tokenizer pads)."""
    out = {}
    for name, value in features.items():
        if not (torch.is_tensor(value) and value.dim() == 2):
            out[name] = value
            continue
        B, L = value.shape
        assert B <= rows and L <= columns, (B, L, rows, columns)
        fill = pad_id if name == "input_ids" else 0
        value = F.pad(value, (0, columns - L), value=fill)
        if rows > B:
            value = torch.cat([value, value[:1].expand(rows - B, -1)])
        out[name] = value
    return out


class CapturedEncoder:
    """A frozen sentence encoder's forward as CUDA graphs, one per padded (rows, columns) shape.

    Routing (the editor's hover) is bound by launching the encoder's ~1000 small kernels from Python, not by the
    GPU (BENCHMARKS.md, "Routing"): one graph replay launches them all at once. Inputs are padded up to a power
    of two of rows and columns (pad_features); a shape is captured the first time it is seen (warm_up() captures
    batch 1 at every length ahead of the first user). A capture that fails (an encoder doing host work inside its
    forward) is logged once and that encoder runs eagerly from then on."""

    def __init__(self, model, max_length: int):
        self.model, self.max_length = model, max_length
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.pool = None
        self.broken: str | None = None

    def shape_for(self, rows: int, columns: int) -> tuple[int, int]:
        return _pow2(rows), min(_pow2(columns, ENCODER_MIN_COLUMNS), max(self.max_length, columns))

    def __call__(self, features: dict) -> torch.Tensor | None:
        """(B, D) sentence embeddings by graph replay, or None where this batch must run eagerly."""
        B, L = features["input_ids"].shape
        if self.broken is not None or B > ENCODER_MAX_ROWS:
            return None
        shape = self.shape_for(B, L)
        entry = self.graphs.get(shape)
        if entry is None:
            if len(self.graphs) >= ENCODER_MAX_GRAPHS:
                return None
            entry = self._capture(shape, features)
            if entry is None:
                return None
        static, out = entry[1], entry[2]
        for name, value in pad_features(features, *shape, self.pad_id).items():
            if torch.is_tensor(value):
                static[name].copy_(value, non_blocking=True)
        entry[0].replay()
        return out[:B].clone()

    def _capture(self, shape: tuple[int, int], features: dict):
        device = next(self.model.parameters()).device
        static = {k: v.to(device) if torch.is_tensor(v) else v
                  for k, v in pad_features(features, *shape, self.pad_id).items()}
        graph, out, self.broken = capture_or_explain(lambda: self.model(dict(static))["sentence_embedding"], device,
                                                     self.pool, "the sentence encoder", "routing runs eagerly")
        if graph is None:
            return None
        self.pool = graph.pool()  # out: (rows, D)
        self.graphs[shape] = (graph, static, out)
        return self.graphs[shape]

    def warm_up(self, texts: list[str]) -> int:
        """Capture batch 1 at every column bucket up to max_length (the hover path). Returns graphs captured."""
        features = tokenize(self.model, texts[:1])
        columns = ENCODER_MIN_COLUMNS
        while self.broken is None:
            shape = self.shape_for(1, min(columns, self.max_length))
            if shape not in self.graphs:  # the text cut to fit the shape: any valid input captures it
                self._capture(shape, {k: v[:, : shape[1]] if torch.is_tensor(v) and v.dim() == 2 else v
                                      for k, v in features.items()})
            if columns >= self.max_length:
                break
            columns *= 2
        return len(self.graphs)


class SentenceEncoder(nn.Module):
    """A sentence-transformers model used as a (by default frozen) mean-pooled source embedder."""

    def __init__(self, model, *, trainable: bool = False, max_length: int = 512, dtype: torch.dtype | None = None,
                 graphs: bool = True):
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
        # A frozen encoder on CUDA routes by CUDA-graph replay (the hover path's latency; `graphs=False`, i.e.
        # RuntimeConfig.encoder_graphs off: eager).
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.captured = (CapturedEncoder(self.model, self.model.max_seq_length)
                         if on_cuda and not trainable and graphs else None)

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
        features = tokenize(self.model, texts)
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        if self.captured is not None and not torch.is_grad_enabled():  # inference; training shapes vary: eager
            emb = self.captured(features)
            if emb is not None:
                return emb.float()  # (B, D)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            emb = self.model(features)["sentence_embedding"]  # (B, D)
        return emb.float()

    def warm_up(self, texts: list[str]) -> int:
        """Capture the hover path's graphs now, from any source text (no-op off CUDA). Returns how many it holds."""
        if self.captured is None:
            return 0
        with torch.no_grad():
            return self.captured.warm_up(texts)


@dataclass
class Routing:
    """Per-sample routing of a batch. E = number of experts, k = top_k."""

    logits: torch.Tensor  # (B, E) router scores without noise
    probs: torch.Tensor  # (B, E) softmax(logits): what we report as "routing probabilities"
    noisy_probs: torch.Tensor  # (B, E) softmax((logits + g) / tau); equals softmax(logits / tau) in eval
    active: torch.Tensor  # (B, k) long, selected experts by descending noisy score; column 0 is the primary
    weights: torch.Tensor  # (B, E) straight-through: exactly 1.0 on selected experts forward, soft gradients backward
    alone_logits: torch.Tensor | None = None  # (B, E) the alone head's scores (Router.alone), where it has one

    @property
    def primary(self) -> torch.Tensor:  # (B,)
        return self.active[:, 0]

    def select(self, rows: torch.Tensor | list[int]) -> "Routing":
        rows = torch.as_tensor(rows, device=self.logits.device, dtype=torch.long)
        alone = None if self.alone_logits is None else self.alone_logits.index_select(0, rows)
        return Routing(*(t.index_select(0, rows) for t in (self.logits, self.probs, self.noisy_probs, self.active,
                                                            self.weights)), alone_logits=alone)

    def info(self, b: int, expert_names: list[str] | None = None) -> dict:
        """The public routing dict of sample b (`get_routing_info`'s format). `alone_expert`: the expert fast mode
        runs alone (the alone head's first; without a head, the router's primary)."""
        active = [int(e) for e in self.active[b].tolist()]
        alone = active[0] if self.alone_logits is None else int(self.alone_logits[b].argmax())
        out = {
            "primary_expert": active[0],
            "active_experts": active,
            "all_expert_probs": [float(p) for p in self.probs[b].tolist()],
            "alone_expert": alone,
        }
        if expert_names is not None:
            out["expert_names"] = list(expert_names)
        return out


def make_alone_head(embed_dim: int, num_experts: int) -> nn.Sequential:
    """Fast mode's ranking of the experts (MoTConfig.alone_head): (B, D) source embeddings -> (B, E) scores."""
    return nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_experts))


class Router(nn.Module):
    """MLP over the source embedding -> one score per expert; Gumbel top-k selection."""

    def __init__(self, embed_dim: int, num_experts: int, hidden: int, top_k: int, tau: float, momentum: float = 0.9,
                 alone_head: bool = False):
        super().__init__()
        self.num_experts, self.top_k, self.tau, self.momentum = num_experts, top_k, tau, momentum
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, num_experts)
        )
        # Fast mode's ranking (MoTConfig.alone_head): a linear score per expert of how likely its kernel is right when
        # it decodes alone. Fit apart from the LM loss (train.fast_primary), so the LM loss never reaches it.
        # Its parameters stay out of the trainable ones (no optimizer of mot-train sees them); checkpoints keep them.
        self.alone = make_alone_head(embed_dim, num_experts) if alone_head else None
        if self.alone is not None:
            self.alone.requires_grad_(False)
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
        self, emb: torch.Tensor, *, noise: bool | None = None, force_active: list[list[int]] | None = None,
        primary_ranks: list[int] | None = None, alone_rows: list[bool] | None = None,
    ) -> Routing:
        """`primary_ranks[b]` = r: row b's chosen experts with the r-th first, the others in order (a translation's
        candidates: decoding/candidates.py); the same set, so the same weights. `alone_rows[b]`: row b decodes its
        primary alone (fast mode), so where the router has an alone head, that head ranks its experts."""
        if primary_ranks is not None and force_active is not None and any(primary_ranks):
            raise ValueError("primary_ranks and force_active both choose the primary: give one")
        noise = self.training if noise is None else noise
        logits = self.mlp(emb.float())  # (B, E)
        alone_logits = None if self.alone is None else self.alone(emb.float())  # (B, E)
        scores, soft = self.gumbel_probs(logits, noise)
        if force_active is not None:  # analysis and tests: choose the active set, keep the gradient path
            active = torch.tensor(force_active, device=logits.device, dtype=torch.long)
            if active.shape != (logits.shape[0], self.top_k):
                raise ValueError(f"force_active must be {logits.shape[0]} lists of top_k={self.top_k} experts, got {force_active}")
            if int(active.min()) < 0 or int(active.max()) >= self.num_experts:
                raise ValueError(f"force_active names an expert outside [0, {self.num_experts}): {force_active}")
        else:
            active = scores.topk(self.top_k, dim=-1).indices  # (B, k), sorted by score: column 0 = primary
            if alone_logits is not None and alone_rows is not None and any(alone_rows):
                rows = torch.tensor(alone_rows, device=logits.device).unsqueeze(1)  # (B, 1)
                active = torch.where(rows, alone_logits.topk(self.top_k, dim=-1).indices, active)  # (B, k)
            if primary_ranks is not None and any(primary_ranks):
                order = [[r] + [j for j in range(self.top_k) if j != r] for r in primary_ranks]
                active = active.gather(1, torch.tensor(order, device=active.device))  # (B, k)
        hard = torch.zeros_like(soft).scatter_(1, active, 1.0)
        weights = hard + (soft - soft.detach())  # exactly `hard` forward
        if self.training:
            with torch.no_grad():
                share = hard.sum(0) / hard.sum()
                self.selection_ema.mul_(self.momentum).add_((1 - self.momentum) * share)
        return Routing(logits=logits, probs=F.softmax(logits, dim=-1), noisy_probs=soft, active=active, weights=weights,
                       alone_logits=alone_logits)
