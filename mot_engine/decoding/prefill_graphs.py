"""A request's prefill as CUDA graph replays, one graph per prompt-length bucket: the first token of an editor's request.

An eager prefill runs the experts' transformers forward from Python: for a 200-token prompt that is bound by
launching ~15 kernels a layer, not by the GPU (BENCHMARKS.md: 21 ms fast, 44 ms full MoT to the first token on an
H100, most of it host time). As routing replays the encoder's graphs (router.CapturedEncoder), a request admitted
alone replays graphs captured for its shapes:

- a secondary's prompt states at each stack boundary (full mode's memory), keyed by (expert, prompt bucket);
- the primary's prompt: its KV cache, the logits of its last token and, in full mode, the interaction at every
  stack, keyed by (expert, mode, prompt bucket, memory bucket).

Prompts are right-padded to a power of two (at least MIN_PROMPT) and run without a padding mask: attention is
causal and every padded position comes after every real one, so no real position attends to one — the real
positions' states, keys and values are those of the unpadded prompt. The logits are taken at the last real token
(a device index), and only the first L cache columns join the slab. The memory a primary reads is copied into
static buffers padded to a power of two, the padding masked (a masked key gets exactly zero weight).

A shape is captured the first time it is seen: two eager warm-up runs on a side stream, then the capture (about
three eager prefills). The graphs of one GPU share its memory pool; each keeps its outputs (its cache, at most
2 x layers x L x kv-width values) until the engine ends. A capture that fails is logged once, and prefills run
eagerly from then on. `capture=False` runs the same padded path eagerly: the CPU tests check it against the
engine's plain prefill; the GPU tests and the benchmarks' parity checks run the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from mot_engine.decoding.slabs import bucket
from mot_engine.graph_capture import capture_or_explain
from mot_engine.model.experts import max_positions
from mot_engine.model.memory import MemoryContext, memory_buffers

MIN_PROMPT = 64  # the smallest prompt bucket
MAX_GRAPHS = 24  # shapes captured at most (each keeps its outputs); others run eagerly


@dataclass
class PrefillOutput:
    """A batch-1 prefill's results, in graph-owned buffers: read them before the next replay of the same shape."""

    logits: torch.Tensor  # (1, V) float32: the last real token's
    keys: list[torch.Tensor]  # per layer (1, Hk, Lb, D): the first L columns are the prompt's
    values: list[torch.Tensor]
    nonfinite: torch.Tensor | None  # () bool: an interaction update was not finite (full mode)


class _Entry:
    """One shape: its static inputs, the function that runs it, and (once captured) its graph and outputs."""

    def __init__(self, static: dict, run: Callable):
        self.static, self.run = static, run
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None


class PrefillGraphs:
    """The Generator's batch-1 prefills, by graph replay (`capture=True`, CUDA) or the same padded path eagerly."""

    def __init__(self, gen, capture: bool = True):
        self.gen, self.capture = gen, capture
        self.entries: dict[tuple, _Entry] = {}
        self.pools: dict[torch.device, tuple] = {}  # one memory pool per GPU (a secondary may sit on another)
        self.broken: str | None = None

    # ------------------------------------------------------------------ the two prefills

    def prompt_states(self, e: int, prompt: list[int]) -> list[torch.Tensor] | None:
        """Expert e's states at each stack boundary over one prompt, (1, Lb, d_e) each — the first L positions are
        the prompt's; None where this prompt must run eagerly."""
        mot = self.gen.mot
        model = mot.experts[e]
        Lb = bucket(len(prompt), MIN_PROMPT)
        if not self._fits(model, Lb):
            return None
        dev = next(model.parameters()).device

        def make():
            static = {"ids": torch.full((1, Lb), _pad_id(mot.tokenizers[e]), dtype=torch.long, device=dev)}
            return static, lambda: mot.prompt_states(e, static["ids"], None)

        entry = self._entry(("states", e, Lb), make)
        if entry is None:
            return None
        _put_prompt(entry.static["ids"], prompt, mot.tokenizers[e])
        return self._execute(entry, dev)

    def prefill(self, p: int, mode: str, prompt: list[int], ctx: MemoryContext | None) -> PrefillOutput | None:
        """Primary p's prefill of one prompt (with `ctx`'s memory in full mode); None where it must run eagerly."""
        mot = self.gen.mot
        model = mot.experts[p]
        Lb = bucket(len(prompt), MIN_PROMPT)
        if not self._fits(model, Lb) or (ctx is not None and ctx.primary_weight.shape[0] != 1):
            return None
        Sb = bucket(max(slot.key.shape[2] for stack in ctx.slots for slot in stack), MIN_PROMPT) if ctx is not None else 0
        dev = next(model.parameters()).device

        def make():
            static = {"ids": torch.full((1, Lb), _pad_id(mot.tokenizers[p]), dtype=torch.long, device=dev),
                      "positions": torch.arange(Lb, device=dev)[None],  # (1, Lb): right padding keeps positions
                      "last": torch.zeros(1, dtype=torch.long, device=dev)}  # (1,) the last real token's index
            static["ctx"] = memory_buffers(mot, p, rows=1, length=Sb) if ctx is not None else None
            return static, lambda: self._run_primary(p, static)

        entry = self._entry(("prefill", p, mode, Lb, Sb), make)
        if entry is None:
            return None
        static = entry.static
        _put_prompt(static["ids"], prompt, mot.tokenizers[p])
        static["last"].fill_(len(prompt) - 1)
        if ctx is not None:
            _copy_memory(static["ctx"], ctx)
        return self._execute(entry, dev)

    def _run_primary(self, p: int, static: dict) -> PrefillOutput:
        mot, model, ctx = self.gen.mot, self.gen.mot.experts[p], static["ctx"]
        cache = DynamicCache(config=model.config)
        if ctx is not None:
            ctx.nonfinite = None  # the hooks set it: this prefill's flag
        with mot.interacting(ctx), self.gen.substitutions("prefill"):
            out = model(input_ids=static["ids"], position_ids=static["positions"], use_cache=True,
                        logits_to_keep=static["last"], **{mot.cache_kwarg[p]: cache})
        return PrefillOutput(logits=out.logits[:, -1, :].float(), keys=[layer.keys for layer in cache.layers],
                             values=[layer.values for layer in cache.layers],
                             nonfinite=ctx.nonfinite if ctx is not None else None)

    # ------------------------------------------------------------------ graphs

    def _fits(self, model, Lb: int) -> bool:
        limit = max_positions(model)
        return self.broken is None and (limit is None or Lb <= limit)

    def _entry(self, key: tuple, make: Callable) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= MAX_GRAPHS:
                return None
            entry = self.entries[key] = _Entry(*make())
        return entry

    def _execute(self, entry: _Entry, device: torch.device):
        if not self.capture:
            return entry.run()
        if entry.graph is None:
            graph, entry.outputs, self.broken = capture_or_explain(entry.run, device, self.pools.get(device),
                                                                   "a prefill", "prefills run eagerly from now on")
            if graph is None:
                return None
            self.pools[device] = graph.pool()  # the graphs of one GPU share its memory (replayed one at a time)
            entry.graph = graph
        entry.graph.replay()
        return entry.outputs


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _put_prompt(ids: torch.Tensor, prompt: list[int], tokenizer) -> None:
    """The prompt into the first columns of the static (1, Lb) ids, padding after it."""
    ids.fill_(_pad_id(tokenizer))
    ids[0, : len(prompt)].copy_(torch.tensor(prompt, dtype=torch.long))


def _copy_memory(static: MemoryContext, ctx: MemoryContext) -> None:
    """A batch-1 memory into the static buffers: its keys first, the rest masked."""
    static.primary_weight.copy_(ctx.primary_weight)
    for stack_in, stack_out in zip(ctx.slots, static.slots):
        for src, dst in zip(stack_in, stack_out):
            S = src.key.shape[2]
            dst.key[:, :, :S].copy_(src.key)
            dst.value[:, :, :S].copy_(src.value)
            dst.mask.zero_()
            dst.mask[..., :S].copy_(src.mask)
            dst.weight.copy_(src.weight)
