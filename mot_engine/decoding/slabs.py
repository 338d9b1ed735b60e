"""Continuous batching with captured decode steps: a *slab* is a static KV cache of C rows that requests join and
leave between steps, and one CUDA graph for its decode step, kept and reused for the life of the engine.

Why: batch-1 decoding of a 1-3B expert runs far below the GPU's bandwidth (small kernels, M=1 matrix products), so
one decode step of 16 rows costs little more than one row — but only if the 16 requests are in the same batch. Requests of an editor
or a batch translation arrive one by one; a cohort per arrival (each with its own cache and graph) would run 16
batch-1 steps for 16 requests. A slab lets every running request with the same (primary, mode) share one step.

Layout (all rows share one write column `c`; a row's tokens occupy columns [start_r, c)):

    columns   0 ........ start_r ............... c ........ M
    row r     (masked)   prompt_r + generated_r   next write  (free)

- A request is prefilled on its own (dynamic cache, eager), then its keys/values are copied into a free row so
  that its prompt ends at column c. Positions (rotary) are per row and independent of columns: the cached keys
  are already rotated, so a row's column offset changes nothing in its attention.
- Columns only move forward. When a newcomer's prompt is longer than c, or c plus the tokens rows still need
  passes M, every row's columns are shifted at once (one copy per layer) — rarely, since M is sized for the
  requests in the slab with room to spare.
- A free row keeps computing (the captured graph has a fixed batch) on masked garbage: it always sees its own
  current column and an inert memory slot, so it stays finite, and its outputs are ignored.
- A full slab moves into a bigger one (a power of two rows, columns and memory length: a small set of shapes), a
  mostly empty one into a smaller one. An emptied slab goes back to a pool with its graph; the next slab of the
  same shape reuses both, so a request never waits for a graph capture once the engine has seen its shape.

The attention mask is our own 4D additive mask over the M columns (transformers passes 4D masks through), edited in
place; the interaction memory lives in fixed per-row buffers. Nothing in the captured step depends on host values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from mot_engine.decoding.compiled_layers import compiled_layers
from mot_engine.graph_capture import capture, capture_or_explain
from mot_engine.kernels.decode_attention import CACHE_WRITE, write_token
from mot_engine.model.memory import MemoryContext, memory_buffers

MIN_COLUMNS = 256
MIN_MEMORY = 64


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class SlabShape:
    primary: int
    mode: str
    rows: int
    columns: int
    memory: int  # memory length per slot (full mode), 0 in fast mode


@dataclass
class Joiner:
    """A prefilled request about to take a row: its keys/values and the inputs of its next decode step."""

    seq: object  # generation._Sequence
    keys: list[torch.Tensor]  # per layer (H, Lp, D)
    values: list[torch.Tensor]
    next_token: torch.Tensor  # () long
    position: torch.Tensor  # () long: the position id of next_token
    memory: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] | None  # [stack][slot] k, v, mask, w
    primary_weight: torch.Tensor | None  # ()

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def memory_length(self) -> int:
        return max((k.shape[1] for stack in self.memory or [] for k, _, _, _ in stack), default=0)


class InFlight:
    """A launched step's sampled tokens on their way to the host: a copy into pinned memory and an event.

    `rows` is the slab's row -> request map when the step was launched: a row freed and taken by a newcomer
    before the tokens land must not hand the old request's token to the new one."""

    def __init__(self, rows: list, staged: torch.Tensor, event):
        self.rows, self.staged, self.event = rows, staged, event

    def wait(self) -> tuple[list, list[int], list[bool]]:
        if self.event is not None:
            self.event.synchronize()
        ids, finite = self.staged.tolist()
        return self.rows, ids, [bool(f) for f in finite]


def joiners_of(cohort) -> list[Joiner]:
    """Each row of a prefilled cohort (sequences.Cohort) as a slab joiner: its prompt's keys/values (the last Lp
    columns of the left-padded cache), its next input token and position, and its interaction memory (full mode)."""
    layers = cohort.cache.layers
    T = cohort.attention_mask.shape[1]
    lengths = cohort.attention_mask.sum(-1).tolist()
    ctx = cohort.ctx
    out = []
    for b, seq in enumerate(cohort.seqs):
        L = int(lengths[b])
        out.append(Joiner(
            seq=seq, keys=[layer.keys[b, :, T - L :] for layer in layers],
            values=[layer.values[b, :, T - L :] for layer in layers],
            next_token=cohort.next_input[b, 0], position=cohort.positions[b, 0],
            memory=ctx.row(b) if ctx is not None else None,
            primary_weight=ctx.primary_weight[b] if ctx is not None else None,
        ))
    return out


def remaining_columns(seq) -> int:
    """Columns a running request still writes: one per decode step until max_new_tokens."""
    return max(0, seq.request.max_new_tokens - len(seq.generated))


@functools.cache
def _slab_layer_class():
    class SlabLayer(StaticLayer):
        """A static cache layer that writes one token at the slab's shared write column — a device tensor that all
        layers share and the slab advances once per step — instead of counting on its own (transformers' layer
        spends an arange and two adds per layer and step on that: 3 of ~32 kernels per layer in a decode step)."""

        def __init__(self, max_cache_len: int, write_column: torch.Tensor):
            super().__init__(max_cache_len=max_cache_len)
            self.cumulative_length = write_column  # (1,) long; get_seq_length() reads it

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            width = key_states.shape[-2]
            if width != 1:  # a verify step (prompt lookup): `width` columns from the write column on
                columns = self.cumulative_length + torch.arange(width, device=self.cumulative_length.device)
                self.keys.index_copy_(2, columns, key_states)
                self.values.index_copy_(2, columns, value_states)
                return self.keys, self.values
            if (CACHE_WRITE["on"] and key_states.is_cuda and key_states.dtype == self.keys.dtype
                    and not torch.compiler.is_compiling()):  # compiled layers (MOT_COMPILE=1): inductor's own copy
                write_token(self.keys, self.values, key_states, value_states, self.cumulative_length)  # one launch
            else:
                self.keys.index_copy_(2, self.cumulative_length, key_states)
                self.values.index_copy_(2, self.cumulative_length, value_states)
            return self.keys, self.values

    return SlabLayer


def supports(model, columns: int) -> bool:
    """Static masks ignore sliding windows: slabs serve only experts whose window is never reached."""
    cfg = getattr(model.config, "text_config", None) or model.config
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True) and columns > window:
        return False
    return not getattr(cfg, "layer_types", None) or all(t == "full_attention" for t in cfg.layer_types)


class DecodeSlab:
    """One static KV cache of `shape.rows` rows and `shape.columns` columns, its masks, inputs and memory buffers."""

    def __init__(self, gen, shape: SlabShape):
        self.gen, self.shape = gen, shape
        mot = gen.mot
        self.model = mot.experts[shape.primary]
        self.dtype = next(self.model.parameters()).dtype
        dev = self.device = next(self.model.parameters()).device
        C, M = shape.rows, shape.columns
        self.cache = StaticCache(config=self.model.config, max_cache_len=M)
        self.write_column = torch.zeros(1, dtype=torch.long, device=dev)  # (1,) shared by every cache layer
        SlabLayer = _slab_layer_class()
        self.cache.layers = [SlabLayer(M, self.write_column) for _ in self.cache.layers]
        self.neg = torch.finfo(self.dtype).min
        self.rows: list[object | None] = [None] * C  # generation._Sequence per row
        self.start = [0] * C
        self.column = 0  # host copy of the write column (`write_column` is the device copy)
        self.key_valid = torch.zeros(C, M, dtype=torch.bool, device=dev)  # (C, M)
        self.step_mask = torch.full((C, 1, 1, M), self.neg, dtype=self.dtype, device=dev)  # (C, 1, 1, M)
        self.input_ids = torch.zeros(C, 1, dtype=torch.long, device=dev)  # (C, 1)
        self.position_ids = torch.zeros(C, 1, dtype=torch.long, device=dev)  # (C, 1)
        self.ctx = self._memory_buffers(mot) if shape.mode == "full" else None
        self.graph = None
        self.eager_steps = 0
        self.outputs = None  # the captured step's (logits, next ids, finite)
        # Two host buffers (ids, finite) per row, alternating: the host reads one step's while the next one's lands.
        pin = dev.type == "cuda"
        self._staging = [torch.zeros(2, C, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._landed = [torch.cuda.Event() for _ in range(2)] if pin else [None, None]  # one per buffer
        self._flip = 0
        self.pending: InFlight | None = None  # the tokens of the last launched step, not yet handed out
        self.wide: dict[int, WideStep] = {}  # verify steps (prompt lookup) by width, each with its own graph

    # ------------------------------------------------------------------ buffers

    def _memory_buffers(self, mot) -> MemoryContext | None:
        ctx = memory_buffers(mot, self.shape.primary, self.shape.rows, self.shape.memory)
        if ctx is not None:
            for stack in ctx.slots:
                for slot in stack:
                    slot.mask[:, 0, 0, 0] = True  # a free row attends to one zero key: finite, and weighted by 0
        return ctx

    def _layers(self):
        return self.cache.layers

    def _ensure_cache(self, like: Joiner) -> None:
        if all(layer.is_initialized for layer in self._layers()):
            return
        for layer, k, v in zip(self._layers(), like.keys, like.values):
            if not layer.is_initialized:
                C = self.shape.rows
                layer.lazy_initialization(k.new_zeros(C, k.shape[0], 0, k.shape[2]), v.new_zeros(C, v.shape[0], 0, v.shape[2]))

    # ------------------------------------------------------------------ occupancy

    @property
    def live(self) -> list[int]:
        return [r for r, s in enumerate(self.rows) if s is not None and s.finish_reason is None]

    @property
    def free(self) -> list[int]:
        return [r for r, s in enumerate(self.rows) if s is None or s.finish_reason is not None]

    def target_column(self, joiners: list[Joiner]) -> int | None:
        """The write column that fits every live row and the joiners, or None if this slab cannot take them.

        Every row's span (prompt + generated so far) must end at the write column, so the column must be at least
        the longest span, and the column plus the most columns any row still writes must stay within M.
        """
        live = self.live
        if len(joiners) > len(self.free) or any(j.memory_length > self.shape.memory for j in joiners):
            return None
        need_left = max([j.length for j in joiners] + [self.column - self.start[r] for r in live] + [0])
        need_right = max([remaining_columns(j.seq) for j in joiners] +
                         [remaining_columns(self.rows[r]) for r in live] + [0])
        if self.column >= need_left and self.column + need_right <= self.shape.columns:
            return self.column  # no shift needed
        if need_left + need_right <= self.shape.columns:
            return need_left
        return None

    def release_row(self, r: int) -> None:
        """Free row r: its columns are masked; its memory becomes inert."""
        self.rows[r] = None
        self.key_valid[r] = False
        self.step_mask[r] = self.neg
        if self.ctx is not None:
            self.ctx.primary_weight[r] = 0.0
            for stack in self.ctx.slots:
                for slot in stack:
                    slot.weight[r] = 0.0
                    slot.mask[r] = False
                    slot.mask[r, 0, 0, 0] = True

    def stage(self, next_ids: torch.Tensor, finite: torch.Tensor) -> InFlight:
        """Start copying a step's (C,) next ids and finite flags to the host; the step's tokens in flight."""
        buf, event = self._staging[self._flip], self._landed[self._flip]
        self._flip ^= 1
        on_gpu = event is not None
        buf[0].copy_(next_ids, non_blocking=on_gpu)
        buf[1].copy_(finite, non_blocking=on_gpu)
        if on_gpu:
            event.record(torch.cuda.current_stream(self.device))
        return InFlight(list(self.rows), buf, event)

    def reset(self) -> None:
        self.pending = None
        for r in range(self.shape.rows):
            self.release_row(r)
        self.start = [0] * self.shape.rows
        self.set_column(0)

    def set_column(self, c: int) -> None:
        self.column = c
        self.write_column.fill_(c)

    def shift_to(self, c_new: int) -> None:
        """Move every row's columns by c_new - column (keys, values, masks) so the write column becomes c_new."""
        c = self.column
        delta = c_new - c
        if delta == 0:
            return
        live = self.live
        lo = min([self.start[r] for r in live] + [c])
        assert lo + delta >= 0 and c_new <= self.shape.columns, (lo, delta, c_new)
        for layer in self._layers():
            if not layer.is_initialized:
                continue
            for t in (layer.keys, layer.values):
                t[:, :, lo + delta : c_new] = t[:, :, lo:c].clone()
        valid = self.key_valid[:, lo:c].clone()
        self.key_valid.zero_()
        self.key_valid[:, lo + delta : c_new] = valid
        self.step_mask.copy_(torch.where(self.key_valid, 0.0, self.neg).to(self.dtype)[:, None, None, :])
        for r in range(self.shape.rows):
            self.start[r] = max(0, self.start[r] + delta)
        self.set_column(c_new)

    def join(self, joiners: list[Joiner]) -> None:
        """Copy prefilled requests into free rows; their prompts end at the write column."""
        c_new = self.target_column(joiners)
        assert c_new is not None, "join() needs target_column() to have accepted the joiners"
        if joiners:
            self._ensure_cache(joiners[0])
        self.shift_to(c_new)
        c = self.column
        free = self.free
        for j, r in zip(joiners, free):
            L = j.length
            for layer, k, v in zip(self._layers(), j.keys, j.values):
                layer.keys[r, :, c - L : c] = k
                layer.values[r, :, c - L : c] = v
            self.key_valid[r] = False
            self.key_valid[r, c - L : c] = True
            self.step_mask[r] = self.neg
            self.step_mask[r, 0, 0, c - L : c] = 0.0
            self.start[r] = c - L
            self.input_ids[r, 0] = j.next_token
            self.position_ids[r, 0] = j.position
            if self.ctx is not None:
                self.ctx.primary_weight[r] = j.primary_weight
                for stack, parts in zip(self.ctx.slots, j.memory):
                    for slot, (key, value, mask, weight) in zip(stack, parts):
                        S = key.shape[1]
                        slot.key[r].zero_()
                        slot.value[r].zero_()
                        slot.key[r, :, :S] = key
                        slot.value[r, :, :S] = value
                        slot.mask[r] = False
                        slot.mask[r, 0, 0, :S] = mask
                        slot.weight[r] = weight
            self.rows[r] = j.seq

    def export_rows(self) -> list[Joiner]:
        """The live rows as joiners (to move into another slab): keys/values of their columns, inputs, memory."""
        out = []
        c = self.column
        for r in self.live:
            lo = self.start[r]
            memory = self.ctx.row(r) if self.ctx is not None else None
            # a row that rejected draft tokens has masked holes in its span: only its visible columns travel
            span = slice(lo, c) if not self.wide else lo + self.key_valid[r, lo:c].nonzero().view(-1)
            out.append(Joiner(
                seq=self.rows[r],
                keys=[layer.keys[r, :, span] for layer in self._layers()],
                values=[layer.values[r, :, span] for layer in self._layers()],
                next_token=self.input_ids[r, 0].clone(), position=self.position_ids[r, 0].clone(),
                memory=memory, primary_weight=self.ctx.primary_weight[r].clone() if self.ctx is not None else None,
            ))
        return out

    # ------------------------------------------------------------------ decoding

    def _run(self):
        mot = self.gen.mot
        if self.ctx is not None:
            self.ctx.nonfinite = None
        # compiled layers keep the GEMV (a custom op inside their graphs); inductor fuses the rest itself
        with mot.interacting(self.ctx), compiled_layers(mot, self.gen.compile_layers), self.gen.substitutions():
            out = self.model(
                input_ids=self.input_ids, attention_mask=self.step_mask, position_ids=self.position_ids,
                use_cache=True, logits_to_keep=1, **{mot.cache_kwarg[self.shape.primary]: self.cache},
            )
        return out.logits[:, -1, :].float(), (self.ctx.nonfinite if self.ctx is not None else None)  # (C, V)

    def _step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole decode step on the device, all of it in the slab's graph: the write column opens, the model runs,
        the greedy next ids become the next inputs, and the column and positions advance. Nothing here depends on
        the host, so the step launches as one graph replay."""
        self.step_mask.index_fill_(3, self.write_column, 0.0)  # every row sees the column it writes now
        self.key_valid.index_fill_(1, self.write_column, True)  # (free rows stay finite)
        logits, nonfinite = self._run()  # (C, V) float32
        finite = torch.isfinite(logits).all(-1)  # (C,)
        if nonfinite is not None:  # the interaction's updates this step
            finite &= ~nonfinite
        next_ids = logits.argmax(-1)  # (C,) greedy; the host overwrites sampled rows (`feed`)
        self.input_ids.copy_(next_ids.view(-1, 1))
        self.write_column.add_(1)
        self.position_ids.add_(1)
        return logits, next_ids, finite

    def decode(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token for every row (free rows included, ignored by the caller): (C, V) float32 logits, (C,) greedy
        next ids — already the next step's inputs — and (C,) finite flags (logits and the interaction's updates)."""
        c = self.column
        if c >= self.shape.columns:
            raise RuntimeError(f"slab of {self.shape.columns} columns is full")  # target_column() prevents this
        self.column += 1
        if not self.gen.cuda_graphs or (self.graph is None and self.eager_steps == 0):
            self.eager_steps += 1  # the first step runs eagerly: kernel selection, lazy buffers
            return self._step()
        if self.graph is None:  # the eager step above was the warm-up: captured with none of its own
            self.graph, self.outputs = capture(self._step, self.device, warm_up=0)
        self.graph.replay()
        return self.outputs

    # ------------------------------------------------------------------ verify steps (prompt lookup)

    def wide_room(self) -> int:
        """The widest verify step the columns allow now: a step of width W may keep up to W columns of every row
        (one row keeping its whole draft) while another row gets only one token, and every row must still fit what
        it has left after it."""
        need = max((remaining_columns(self.rows[r]) for r in self.live), default=0)
        return self.shape.columns - self.column - need + 1

    def decode_wide(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One verify step: row r's `ids[r]` — its next input, then its draft, padded to a common width W — at the
        write column on (free rows: zeros). Returns (C, W, V) float32 logits and the interaction's non-finite flag
        (or None); the W columns are visible to every row until `settle` masks the rejected ones."""
        W = len(ids[0])
        if self.column + W > self.shape.columns:
            raise RuntimeError(f"slab of {self.shape.columns} columns has no room for {W} at {self.column}")  # wide_room()
        step = self.wide.get(W)
        if step is None:
            step = self.wide[W] = WideStep(self, W)
        step.ids.copy_(torch.tensor(ids, dtype=torch.long), non_blocking=False)
        self.column += W
        return step.run()

    def settle(self, width: int, kept: dict[int, tuple[int, int]]) -> None:
        """After a verify step of `width` columns, `kept[r]` = (draft tokens row r kept, its next token): the write
        column moves back to just after the most any row kept (the columns past it are written again next step, as
        a dynamic cache crops them), each row masks its own rejected columns before that, and decodes its next token
        at the position after what it kept. At batch 1 the columns advance exactly by the tokens emitted."""
        c = self.column - width  # the step's first column
        end = c + 1 + max(n for n, _ in kept.values())
        self.key_valid[:, end : self.column] = False
        self.step_mask[:, 0, 0, end : self.column] = self.neg
        for r, (n, token) in kept.items():
            self.key_valid[r, c + n + 1 : end] = False
            self.step_mask[r, 0, 0, c + n + 1 : end] = self.neg
            self.input_ids[r, 0] = token
            self.position_ids[r, 0] += n + 1
        self.set_column(end)

    def feed(self, r: int, token: torch.Tensor) -> None:
        """Row r's next input is `token` (a sampled row), not its greedy one."""
        self.input_ids[r, 0] = token


def ends_with_pending(slab: DecodeSlab, r: int, pending) -> bool:
    """Does row r's request end by length with the token already in flight for it?"""
    seq = slab.rows[r]
    return pending.rows[r] is seq and remaining_columns(seq) <= 1


class WideStep:
    """A slab's verify step of a fixed width W: every row's W input tokens at columns [c, c + W), each query seeing
    its row's visible columns and the new ones up to its own (causal); the rows' positions run on from their own.
    Like the one-token step it depends on no host value (the column is the slab's device tensor), so on a GPU it is
    captured once per width and replayed; widths are few (1 + draft lengths up to LookupSettings.max_draft)."""

    def __init__(self, slab: DecodeSlab, width: int):
        self.slab, self.width = slab, width
        dev = slab.device
        self.ids = torch.zeros(slab.shape.rows, width, dtype=torch.long, device=dev)  # (C, W), filled by the host
        self.offsets = torch.arange(width, device=dev)  # (W,)
        self.columns = torch.arange(slab.shape.columns, device=dev)  # (M,)
        self.graph, self.outputs, self.eager_runs = None, None, 0

    def _step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        slab = self.slab
        rel = self.columns - slab.write_column  # (M,) column minus the write column
        new = (rel >= 0) & (rel <= self.offsets[:, None])  # (W, M): query j sees the new columns c .. c + j
        visible = slab.key_valid[:, None, None, :] | new[None, None]  # (C, 1, W, M)
        mask = torch.zeros(visible.shape, dtype=slab.dtype, device=slab.device).masked_fill_(~visible, slab.neg)
        positions = slab.position_ids + self.offsets  # (C, W)
        mot, gen = slab.gen.mot, slab.gen
        if slab.ctx is not None:
            slab.ctx.nonfinite = None
        with mot.interacting(slab.ctx), gen.substitutions("verify"):
            out = slab.model(input_ids=self.ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=self.width, **{mot.cache_kwarg[slab.shape.primary]: slab.cache})
        width_columns = slab.write_column + self.offsets  # (W,)
        slab.key_valid.index_fill_(1, width_columns, True)  # every row's new columns; `settle` masks rejected ones
        slab.step_mask.index_fill_(3, width_columns, 0.0)
        slab.write_column.add_(self.width)
        return out.logits.float(), (slab.ctx.nonfinite if slab.ctx is not None else None)  # (C, W, V)

    def run(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.slab.gen.cuda_graphs or (self.graph is None and self.eager_runs == 0):
            self.eager_runs += 1  # the first run is eager: kernel selection, lazy buffers
            return self._step()
        if self.graph is None:  # the eager run above was the warm-up
            self.graph, self.outputs, broken = capture_or_explain(
                self._step, self.slab.device, None, f"a slab's verify step of width {self.width}",
                "prompt lookup is off for this engine (an eager verify step costs more than it wins)", warm_up=0)
            if broken:
                self.slab.gen.prompt_lookup = False
                return self._step()  # nothing ran during the failed capture: this step runs eagerly
        self.graph.replay()
        return self.outputs
