"""The Mixture-of-Thoughts model: frozen experts, a router, and interaction layers between their stacks.

Read top to bottom:
  1. `MixtureOfThoughts.__init__` wraps the frozen experts (never edited: we add forward hooks on the last decoder
     layer of each stack) and builds the trainable router and interaction layers.
  2. `route` embeds the sources and picks, per sample, k active experts; the first is the primary.
  3. `memory_context` runs each sample's secondaries over its prompt only and turns their stack states into
     keys/values for the primary to read (once per request).
  4. `forward` (training) runs each primary over prompt + target with the hooks active and returns the losses.
  5. `target_logits`, `get_routing_info`: the text-level API. Decoding (and `translate`) lives in `decoding/`.

Why secondaries see only the prompt: ARCHITECTURE.md, "Interaction without look-ahead".
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mot_engine.errors import SourceTooLong
from mot_engine.model import losses
from mot_engine.model.config import MoTConfig
from mot_engine.model.experts import (
    cache_kwarg_name,
    find_decoder_layers,
    hidden_size_of,
    split_into_stacks,
)
from mot_engine.model.interaction import SMALL_QUERY, InteractionLayer, MemorySlot
from mot_engine.model.memory import MemoryContext
from mot_engine.model.prompts import Prompt, PromptFormat, TemplateFormat, get_format
from mot_engine.model.router import Router, Routing, SentenceEncoder

log = logging.getLogger(__name__)


@dataclass
class MoTOutput:
    loss: torch.Tensor  # scalar: L_lm + weighted auxiliary losses
    lm_loss: torch.Tensor  # scalar: mean cross-entropy over target tokens (CUDA + EOS) of the whole batch
    aux: dict[str, torch.Tensor]  # entropy, balance, consistency (unweighted)
    routing: Routing
    sample_lm_loss: torch.Tensor  # (B,) mean target cross-entropy per sample
    num_target_tokens: int
    nonfinite: bool = False


class MixtureOfThoughts(nn.Module):
    def __init__(
        self,
        expert_models: list[nn.Module],
        tokenizers: list,
        config: MoTConfig,
        *,
        encoder: nn.Module | None = None,
        expert_names: list[str] | None = None,
        device: torch.device | str | None = None,
        encoder_graphs: bool = True,
    ):
        """`encoder_graphs`: a frozen encoder on CUDA routes by CUDA-graph replay (RuntimeConfig.encoder_graphs)."""
        super().__init__()
        config.validate(len(expert_models))
        if len(tokenizers) != len(expert_models):
            raise ValueError(f"got {len(expert_models)} experts but {len(tokenizers)} tokenizers")
        self.config = config
        self.experts = nn.ModuleList(expert_models)
        self.tokenizers = list(tokenizers)
        names = expert_names or [e.name for e in config.experts] or [f"expert{i}" for i in range(len(expert_models))]
        if len(names) != len(expert_models):
            raise ValueError(f"got {len(names)} expert names for {len(expert_models)} experts: {names}")
        self.expert_names = list(names)
        self.prompt_format: PromptFormat = (get_format(config.prompt_format) if config.prompt_format is not None
                                            else TemplateFormat(config.prompt_template))
        self.device = torch.device(device) if device is not None else next(expert_models[0].parameters()).device

        self.hidden_sizes = [hidden_size_of(m) for m in expert_models]
        shared_dim = config.shared_dim or min(self.hidden_sizes)
        if shared_dim % config.interaction_heads:
            raise ValueError(
                f"shared_dim {shared_dim} (default: smallest expert hidden size) is not divisible by "
                f"interaction_heads={config.interaction_heads}; set shared_dim or interaction_heads"
            )
        self.shared_dim = shared_dim

        if encoder is None:
            from sentence_transformers import (
                SentenceTransformer,  # heavy (~2 s): only when no encoder is given
            )

            encoder = SentenceTransformer(config.encoder, device=str(self.device))
        self.encoder = SentenceEncoder(encoder, trainable=config.train_encoder, max_length=config.encoder_max_length,
                                       graphs=encoder_graphs)
        self.router = Router(
            self.encoder.dim, len(expert_models), config.router_hidden, config.top_k, config.gumbel_tau,
            config.balance_momentum, config.alone_head,
        )
        self.interaction = nn.ModuleList(
            InteractionLayer(self.hidden_sizes, shared_dim, config.interaction_heads, config.hidden_clamp)
            for _ in range(config.num_stacks)
        )
        self.encoder.to(self.device)
        self.router.to(self.device)
        self.interaction.to(self.device)

        # Experts are frozen and always in eval mode (no dropout): a MoT in training mode trains only its own layers.
        for m in self.experts:
            m.requires_grad_(False)
            m.eval()

        self.stacks: list[list[range]] = []
        self.boundary_layers: list[list[int]] = []
        self._hooks = []
        for e, model in enumerate(self.experts):
            layers = find_decoder_layers(model)
            stacks = split_into_stacks(len(layers), config.num_stacks)
            self.stacks.append(stacks)
            self.boundary_layers.append([st[-1] for st in stacks])
            for s, st in enumerate(stacks):
                self._hooks.append(layers[st[-1]].register_forward_hook(_StackHook(self, e, s)))
        self.cache_kwarg = [cache_kwarg_name(m) for m in self.experts]
        self.eos_token_ids = [self._eos_ids(e) for e in range(len(self.experts))]
        self._ctx: MemoryContext | None = None  # set while a primary runs with interaction
        self._capture: dict[int, list] | None = None  # set while secondaries run over prompts
        self._use_compiled_layers = False  # set by the Generator's compiled decode steps (decoding/compiled_layers.py)
        self._compiled_update = None
        # Decode steps may run the interaction's fused path (InteractionLayer.decode_update): the kernels are set by
        # kernels.install_fused_interaction, the flag by kernels.fused_interaction (the Generator's decode steps).
        self._use_fused_interaction = False
        self._interaction_kernels: tuple | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.experts:
            m.eval()
        return self

    def trainable_parameters(self):
        """Router + interaction layers (+ the encoder if configured trainable). Never an expert parameter."""
        for _, p in self.named_trainable_parameters():
            yield p

    def named_trainable_parameters(self):
        for name, p in self.named_parameters():
            if not name.startswith("experts.") and p.requires_grad:
                yield name, p

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: trainable parameters and the router's running statistics."""
        sd = {name: p.detach() for name, p in self.named_trainable_parameters()}
        sd["router.selection_ema"] = self.router.selection_ema.detach()
        if self.router.alone is not None:  # fit apart (train.fast_primary), not by the LM loss
            sd.update({f"router.alone.{n}": p.detach() for n, p in self.router.alone.named_parameters()})
        return sd

    def _eos_ids(self, e: int) -> set[int]:
        ids = set()
        tok_eos = self.tokenizers[e].eos_token_id
        if tok_eos is not None:
            ids.add(int(tok_eos))
        gen_cfg = getattr(self.experts[e], "generation_config", None)
        gen_eos = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        return ids

    def _on_stack_output(self, e: int, s: int, output):
        """Forward hook on the last layer of stack s of expert e: capture (secondary) or interact (primary)."""
        h = output[0] if isinstance(output, tuple) else output  # (B, T, d_e)
        if self._capture is not None and e in self._capture:
            self._capture[e][s] = h
        ctx = self._ctx
        if ctx is None or ctx.primary != e or not ctx.slots[s]:
            return None
        if (self._use_fused_interaction and not torch.is_grad_enabled() and h.shape[1] <= SMALL_QUERY
                and h.device == self.device and h.is_contiguous()):  # a decode step: the fused path, same function
            if ctx.nonfinite is None:
                ctx.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
            h = self.interaction[s].decode_update(e, h, ctx.slots[s], ctx.primary_weight, ctx.nonfinite,
                                                  *self._interaction_kernels)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        update = self._compiled_update if self._use_compiled_layers else InteractionLayer.update
        delta = update(self.interaction[s], e, h.to(self.device), ctx.slots[s], ctx.primary_weight)
        bad = ~torch.isfinite(delta).all()
        ctx.nonfinite = bad if ctx.nonfinite is None else (ctx.nonfinite | bad)
        h = h + delta.to(device=h.device, dtype=h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    @contextlib.contextmanager
    def interacting(self, ctx: MemoryContext | None):
        """Run the primary of `ctx` with interaction updates at every stack boundary."""
        prev, self._ctx = self._ctx, ctx
        try:
            yield
        finally:
            self._ctx = prev

    # ------------------------------------------------------------------ tokens

    def format_for(self, template: str | None = None, format_name: str | None = None) -> PromptFormat:
        """The prompt format of a request: a named one, else a template, else this model's own."""
        if format_name is not None:
            return get_format(format_name)
        return TemplateFormat(template) if template is not None else self.prompt_format

    def prompt(self, e: int, source: str, template: str | None = None, format_name: str | None = None) -> Prompt:
        return self.format_for(template, format_name).render(source, self.tokenizers[e])

    def prompt_text(self, source: str, template: str | None = None, format_name: str | None = None) -> str:
        return self.prompt(0, source, template, format_name).text

    def prompt_ids(self, e: int, source: str, template: str | None = None, format_name: str | None = None) -> list[int]:
        prompt = self.prompt(e, source, template, format_name)
        ids = self.tokenizers[e](prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
        limit = self.config.max_source_tokens
        if len(ids) > limit:
            raise SourceTooLong(
                f"the source is {len(ids)} tokens long for expert {self.expert_names[e]!r} (prompt included); "
                f"the limit is {limit} tokens",
                limit=limit, actual=len(ids), expert=self.expert_names[e],
            )
        return ids

    def target_ids(self, e: int, target: str | list[int]) -> list[int]:
        if isinstance(target, str):
            return self.tokenizers[e](target, add_special_tokens=False)["input_ids"]
        return [int(t) for t in target]

    # ------------------------------------------------------------------ routing

    def route(self, sources: list[str], *, force_active: list[list[int]] | None = None, noise: bool | None = None,
              primary_ranks: list[int] | None = None, alone_rows: list[bool] | None = None) -> Routing:
        """Per-sample routing of a batch of sources (noise only in training mode unless `noise` says otherwise).
        `primary_ranks[b]` = r: row b's active experts with the router's r-th first, the others in order (a
        translation's candidates: decoding/candidates.py); the sources are encoded once either way. `alone_rows[b]`:
        row b decodes alone (fast mode): the router's alone head ranks its experts where there is one."""
        emb = self.encoder(list(sources))  # (B, D)
        return self.router(emb, noise=noise, force_active=force_active, primary_ranks=primary_ranks,
                           alone_rows=alone_rows)

    @torch.no_grad()
    def get_routing_info(self, source: str) -> dict:
        """{"primary_expert", "active_experts", "all_expert_probs", "expert_names"}: deterministic (no noise)."""
        return self.route([source], noise=False).info(0, self.expert_names)

    # ------------------------------------------------------------------ interaction memory

    def prompt_states(self, e: int, ids: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Expert e's (frozen) states at each stack boundary over right-padded prompt ids (B, L): [stack] (B, L, d_e).
        `mask` (B, L) marks real tokens; None (prompts padded at the end, batch 1) gives every real position the
        same states, since attention is causal."""
        self._capture = {e: [None] * self.config.num_stacks}
        try:
            with torch.no_grad():
                self.experts[e].get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
            return self._capture[e]
        finally:
            self._capture = None

    def _run_prompts(self, e: int, prompts: list[list[int]], runner: Callable | None = None) -> list[torch.Tensor]:
        """Expert e's states at each stack boundary over right-padded prompts: [stack] (B, >= L, d_e), the first
        len(prompts[b]) positions of row b being its prompt's. `runner(e, prompt)` (the Generator's prefill graphs)
        serves a batch of one where it can; it returns None where it cannot."""
        if runner is not None and len(prompts) == 1 and not torch.is_grad_enabled():
            states = runner(e, prompts[0])
            if states is not None:
                return states
        dev = next(self.experts[e].parameters()).device
        ids, mask = pad_batch(prompts, self.tokenizers[e].pad_token_id, dev)
        return self.prompt_states(e, ids, mask)

    def memory_context(
        self, sources: list[str], routing: Routing, prompts: list[list[list[int]]] | None = None,
        template: str | None = None, prompt_runner: Callable | None = None,
    ) -> MemoryContext | None:
        """Keys/values of every sample's secondaries (over their prompts), for a group sharing one primary.

        `prompts[b][e]`, if given, are sample b's prompt ids for expert e (else tokenized here). `prompt_runner`:
        see `_run_prompts`.
        """
        primary = int(routing.active[0, 0])
        assert bool((routing.active[:, 0] == primary).all()), "memory_context takes a group with one primary"
        B, k = routing.active.shape
        if k == 1:
            return None
        active = routing.active.tolist()
        # Run each secondary expert once over all the prompts it reads.
        per_expert: dict[int, list[int]] = {}
        for b in range(B):
            for j in active[b][1:]:
                per_expert.setdefault(j, []).append(b)
        kv: dict[tuple[int, int], list] = {}  # (expert, sample) -> [stack] -> (k, v, len)
        for j, rows in per_expert.items():
            prompt_j = [prompts[b][j] if prompts is not None else self.prompt_ids(j, sources[b], template) for b in rows]
            states = self._run_prompts(j, prompt_j, prompt_runner)
            for s in range(self.config.num_stacks):
                key, value = self.interaction[s].memory(j, states[s].to(self.device))  # (n, H, S, hd)
                for n, b in enumerate(rows):
                    L = len(prompt_j[n])
                    kv.setdefault((j, b), []).append((key[n, :, :L], value[n, :, :L]))
        slots: list[list[MemorySlot]] = []
        for s in range(self.config.num_stacks):
            stack_slots = []
            for r in range(1, k):
                experts_r = [active[b][r] for b in range(B)]
                parts = [kv[(experts_r[b], b)][s] for b in range(B)]
                S = max(p[0].shape[1] for p in parts)
                key = torch.stack([F.pad(p[0], (0, 0, 0, S - p[0].shape[1])) for p in parts])  # (B, H, S, hd)
                value = torch.stack([F.pad(p[1], (0, 0, 0, S - p[1].shape[1])) for p in parts])
                lengths = torch.tensor([p[0].shape[1] for p in parts], device=self.device)
                mask = (torch.arange(S, device=self.device)[None, :] < lengths[:, None]).view(B, 1, 1, S)
                weight = routing.weights.gather(1, routing.active[:, r : r + 1]).squeeze(1)  # (B,)
                stack_slots.append(MemorySlot(key=key, value=value, mask=mask, weight=weight))
            slots.append(stack_slots)
        primary_weight = routing.weights[:, primary]
        return MemoryContext(primary=primary, primary_weight=primary_weight, slots=slots)

    # ------------------------------------------------------------------ teacher forcing

    def _teacher_forced(
        self, p: int, prompts: list[list[int]], targets: list[list[int]], ctx: MemoryContext | None
    ) -> tuple[torch.Tensor, list[int]]:
        """Logits of primary p over right-padded prompt+target; row layout (B, K, V) for the last K positions."""
        model = self.experts[p]
        dev = next(model.parameters()).device
        seqs = [pr + tg for pr, tg in zip(prompts, targets)]
        ids, mask = pad_batch(seqs, self.tokenizers[p].pad_token_id, dev)
        T = ids.shape[1]
        keep_from = min(len(pr) for pr in prompts) - 1  # first position whose logits predict a target token
        with self.interacting(ctx):
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=T - keep_from)
        return out.logits, [keep_from] * len(seqs)

    def forward(
        self, sources: list[str], targets: list[str | list[int]], *, force_active: list[list[int]] | None = None,
        add_eos: bool = True,
    ) -> MoTOutput:
        """Teacher-forced MoT over a batch: per-sample routing, L_lm on target tokens only, auxiliary losses."""
        if len(sources) != len(targets):
            raise ValueError(f"got {len(sources)} sources but {len(targets)} targets")
        routing = self.route(sources, force_active=force_active)
        B = len(sources)
        sample_loss: list[torch.Tensor | None] = [None] * B
        total_ce = torch.zeros((), device=self.device)
        total_tokens = 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        for p in sorted(set(routing.primary.tolist())):
            rows = (routing.primary == p).nonzero().squeeze(1)
            group = routing.select(rows)
            srcs = [sources[b] for b in rows.tolist()]
            prompts = [self.prompt_ids(p, s) for s in srcs]
            tgts = []
            for b in rows.tolist():
                # a reference answer (text) continues the format's answer prefix: only that part is a target
                target = targets[b] if not isinstance(targets[b], str) else \
                    self.prompt_format.target_for(sources[b], targets[b])
                t = self.target_ids(p, target)
                eos = self.tokenizers[p].eos_token_id
                tgts.append(t + [eos] if add_eos and eos is not None else t)
                if not tgts[-1]:
                    raise ValueError(f"sample {b}: the target is empty")
            ctx = self.memory_context(srcs, group)
            logits, keep = self._teacher_forced(p, prompts, tgts, ctx)  # (b, K, V)
            if ctx is not None and ctx.nonfinite is not None:
                nonfinite = nonfinite | ctx.nonfinite
            for n, b in enumerate(rows.tolist()):
                P, Tt = len(prompts[n]), len(tgts[n])
                start = P - 1 - keep[n]
                lg = logits[n, start : start + Tt].float().to(self.device)  # (Tt, V)
                ce = F.cross_entropy(lg, torch.tensor(tgts[n], device=self.device), reduction="sum")
                sample_loss[b] = ce / Tt
                total_ce = total_ce + ce
                total_tokens += Tt
        lm_loss = total_ce / total_tokens
        aux = losses.auxiliary_losses(self.router, routing)
        cfg = self.config
        loss = (
            lm_loss + cfg.entropy_weight * aux["entropy"] + cfg.balance_weight * aux["balance"]
            + cfg.lambda_consistency * aux["consistency"]
        )
        nonfinite = nonfinite | ~torch.isfinite(loss)
        return MoTOutput(
            loss=loss, lm_loss=lm_loss, aux=aux, routing=routing, sample_lm_loss=torch.stack(sample_loss),
            num_target_tokens=total_tokens, nonfinite=bool(nonfinite),
        )

    def target_logits(
        self, source: str, target: str | list[int], *, active_experts: list[int] | None = None
    ) -> torch.Tensor:
        """(T, V) logits of the primary: row t follows the prompt and the first t target tokens.

        A string target is tokenized by the primary's tokenizer on its own (add_special_tokens=False).
        `active_experts` forces the routing (first = primary) for tests and analysis.
        """
        force = [list(active_experts)] if active_experts is not None else None
        routing = self.route([source], force_active=force)
        p = int(routing.primary[0])
        prompt = self.prompt_ids(p, source)
        tgt = self.target_ids(p, target)
        if not tgt:
            raise ValueError("target_logits needs a non-empty target")
        ctx = self.memory_context([source], routing)
        logits, keep = self._teacher_forced(p, [prompt], [tgt], ctx)
        start = len(prompt) - 1 - keep[0]
        return logits[0, start : start + len(tgt)]


def pad_batch(seqs: list[list[int]], pad_id: int, device, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, max length) long on `device`; right padding unless `left`."""
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, x in enumerate(seqs):
        cols = slice(L - len(x), L) if left else slice(0, len(x))
        ids[b, cols] = torch.tensor(x, dtype=torch.long)
        mask[b, cols] = 1
    return ids.to(device), mask.to(device)


class _StackHook:
    """A picklable/deep-copyable hook object (a closure would keep pointing at the original model after deepcopy)."""

    def __init__(self, mot: MixtureOfThoughts, expert: int, stack: int):
        self.mot, self.expert, self.stack = mot, expert, stack

    def __call__(self, module, args, output):
        return self.mot._on_stack_output(self.expert, self.stack, output)


def print_gpu_memory(prefix: str = "") -> dict:
    """Print and return allocated / reserved / peak memory of every CUDA device (nothing on CPU)."""
    stats = {}
    if not torch.cuda.is_available():
        print(f"{prefix}no CUDA device")
        return stats
    for d in range(torch.cuda.device_count()):
        gib = 1024**3
        stats[d] = {
            "allocated_gib": torch.cuda.memory_allocated(d) / gib,
            "reserved_gib": torch.cuda.memory_reserved(d) / gib,
            "peak_gib": torch.cuda.max_memory_allocated(d) / gib,
        }
        s = stats[d]
        print(f"{prefix}cuda:{d} allocated {s['allocated_gib']:.2f} GiB, reserved {s['reserved_gib']:.2f} GiB, peak {s['peak_gib']:.2f} GiB")
    return stats
