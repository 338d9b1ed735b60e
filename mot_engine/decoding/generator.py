"""Batched, cached, step-wise decoding for both modes: the engine API the daemon drives (add / step / abort).

- Routing is decided once per request, from the source, when the request is admitted (never re-routed mid-text).
- fast mode: the primary expert decodes alone (no interaction), exactly its own greedy/sampled output.
- full mode: secondaries run once over the prompt (`MixtureOfThoughts.memory_context`), then the primary decodes
  with a KV cache and reads the secondaries' memory at every stack, for every token. Cached decoding equals the
  teacher-forced forward (`target_logits`) on the generated tokens: tests/test_invariants.py holds that.
- On CUDA (static cache + CUDA graphs) every running request with the same (primary, mode) decodes in one batch:
  a request is prefilled on its own, then joins a row of that pair's slab (decoding/slabs.py), whose decode step
  is one captured graph reused for the engine's life; a finished or aborted request frees its row at the next step.
  The host reads a slab step's tokens one step late (during the next `step()`, after launching it), so the GPU
  never waits for Python's bookkeeping.
- Elsewhere (CPU, experts on several GPUs) requests admitted together and sharing (primary, mode) decode as one
  batch ("cohort") with its own dynamic KV cache; a finished request leaves its cohort at the next step.
"""

from __future__ import annotations

import itertools
import time

import torch
from transformers import DynamicCache

from mot_engine.decoding.compiled_layers import install_compiled_layers
from mot_engine.decoding.prefill_graphs import PrefillGraphs
from mot_engine.decoding.requests import GenerationRequest, GenerationResult, StepOutput
from mot_engine.decoding.sampling import next_tokens, request_rng, sample_live
from mot_engine.decoding.sequences import (
    Cohort,
    PrefilledCache,
    Sequence,
    compact,
    detokenize_incrementally,
    same_prompt,
    share_prefill,
    shared_rows,
    stack_routings,
    strip_eos,
)
from mot_engine.decoding.slabs import (
    MIN_COLUMNS, MIN_MEMORY, DecodeSlab, Joiner, SlabShape, bucket, ends_with_pending, joiners_of, remaining_columns,
    supports,
)
from mot_engine.decoding.speculation import (
    LookupSettings,
    can_roll_back,
    decode_slab_with_drafts,
    decode_with_drafts,
    drafts_for,
    speculates_on,
)
from mot_engine.decoding.stopping import KernelEnd
from mot_engine.defaults import MODES
from mot_engine.envs import RuntimeConfig
from mot_engine.errors import NonFiniteError, SourceTooLong
from mot_engine.kernels.substitutions.attention import (
    install_decode_attention, install_fused_cache_write, install_fused_rotary,
)
from mot_engine.kernels.substitutions.decode import decode_substitutions
from mot_engine.kernels.substitutions.int4 import install_int4_kernels
from mot_engine.kernels.substitutions.interaction import install_fused_interaction
from mot_engine.kernels.substitutions.launch import install_programmatic_launch
from mot_engine.kernels.substitutions.linear import install_fused_mlp, install_fused_qkv, install_triton_gemv
from mot_engine.kernels.substitutions.norms import install_fused_norms
from mot_engine.kernels.substitutions.residual import install_fused_residual
from mot_engine.model.experts import max_positions
from mot_engine.model.mixture import MixtureOfThoughts, pad_batch

# Requests of one (primary, mode) admitted together, up to this many, prefill one by one by graph replay (prefill
# graphs on): on an H100 one graph prefill took 3 ms fast / 8 ms full MoT against 19 / 41 ms eager for one request
# (run T, BENCHMARKS.md), and an eager batch costs about as much as one eager request until compute dominates.
GRAPH_PREFILL_MAX_GROUP = 8
SLAB_POOL_SIZE = 8  # emptied slabs kept (with their captured graphs) for reuse


class Generator:
    """The decoding engine over one MixtureOfThoughts. Not thread-safe: one thread drives it."""

    def __init__(
        self, mot: MixtureOfThoughts, max_batch_size: int = 16, *, runtime: RuntimeConfig | None = None,
        static_cache: bool | None = None, cuda_graphs: bool | None = None,
    ):
        """`runtime`: the decode-path switches (mot_engine/envs.py; default: as the environment sets them).
        `static_cache` / `cuda_graphs` override the runtime's choice of decode path (tests)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.mot = mot
        self.max_batch_size = max_batch_size
        self.runtime = runtime = runtime if runtime is not None else RuntimeConfig.from_env()
        # Slabs (static KV cache, continuous batching) + one CUDA graph per slab's decode step: kernel launches, not
        # FLOPs, bound batch-1 decoding of 1-3B models (ARCHITECTURE.md, "Decoding engine"). Default on CUDA, off on
        # CPU unless runtime.slabs (there the slab path runs eagerly: continuous batching without graphs; CI tests
        # it that way); runtime.cuda_graphs off disables both on CUDA.
        # A captured graph lives on one device: a primary on another GPU than the interaction layers decodes eagerly
        # (secondaries anywhere are fine: they only run in the prefill).
        # An explicit static_cache=False (the cohort path) turns the default graphs off with it.
        on_cuda = mot.device.type == "cuda" and runtime.cuda_graphs
        slabs = on_cuda or bool(cuda_graphs) or runtime.slabs
        self.static_cache = slabs if static_cache is None else static_cache
        self.cuda_graphs = (on_cuda and self.static_cache) if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not self.static_cache:
            raise ValueError("cuda_graphs needs static_cache")
        if self.cuda_graphs and mot.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, the model is on {mot.device}")
        # torch.compile of the decoder layers' forward for decode steps — opt-in (runtime.compile_layers):
        # compiling every layer of three experts for batch 1 and >1 took ~6.5 minutes of daemon start-up on an H200.
        self.compile_layers = self.cuda_graphs and runtime.compile_layers
        if self.compile_layers:
            install_compiled_layers(mot, whole_layers=runtime.compile_whole_layers)
        # Decode steps and prefills run the experts' RMSNorms as one fused kernel each (mot_engine/kernels/: ~1/3
        # fewer kernels per token); training and scoring keep the experts' own forward.
        self.fused_norms = runtime.fused_norms
        if self.fused_norms:
            install_fused_norms(mot)
        # Decode steps (and, for the rotary, prefills) on CUDA also run Triton kernels in place of the experts'
        # small ones (mot_engine/kernels/substitutions/), each installed where a probe shows the same function and
        # switched off by its runtime field (envs.RuntimeConfig says what each does). The residual folds step aside
        # for compiled layers (inductor fuses them itself).
        def triton_kernel(on: bool, install) -> bool:
            return mot.device.type == "cuda" and on and install(mot) > 0

        self.triton_gemv = triton_kernel(runtime.triton_gemv, install_triton_gemv)
        self.fused_qkv = triton_kernel(runtime.fused_qkv, install_fused_qkv)
        self.fused_mlp = triton_kernel(runtime.fused_mlp, install_fused_mlp)
        self.fused_rotary = triton_kernel(runtime.fused_rotary, install_fused_rotary)
        self.decode_attention = triton_kernel(runtime.decode_attention, install_decode_attention)
        self.fused_cache_write = triton_kernel(runtime.fused_cache_write, install_fused_cache_write)
        self.fused_interaction = triton_kernel(runtime.fused_interaction, install_fused_interaction)
        self.fused_residual = not self.compile_layers and triton_kernel(runtime.fused_residual, install_fused_residual)
        self.programmatic_launch = triton_kernel(runtime.pdl, install_programmatic_launch)
        # int4 experts: always (no other fast path); their q/k/v and gated-MLP fusions by the same switches as bf16's
        self.int4_kernels = triton_kernel(True, lambda m: install_int4_kernels(m, qkv=runtime.fused_qkv,
                                                                               mlp=runtime.fused_mlp))
        # A request admitted alone prefills by CUDA-graph replay (its secondaries' prompts, then its primary's), one
        # graph per prompt-length bucket (decoding/prefill_graphs.py): the first token is otherwise bound by
        # launching the experts' kernels from Python.
        self.prefill_graphs = (PrefillGraphs(self) if self.cuda_graphs and not self.compile_layers
                               and runtime.prefill_graphs else None)
        # Prompt-lookup speculation (decoding/speculation.py): cohorts whose cache can roll back, and slabs.
        self.prompt_lookup = speculates_on(mot.device, runtime)
        self.lookup_settings = LookupSettings()
        self.waiting: list[Sequence] = []
        self.cohorts: list[Cohort] = []  # dynamic-cache batches (CPU, several GPUs, sliding windows)
        self.slabs: dict[tuple[int, str], DecodeSlab] = {}  # static-cache batches, one per (primary, mode)
        self._slab_pool: list[DecodeSlab] = []  # emptied slabs, kept with their captured graphs
        self._aborted: set[str] = set()
        self._pending_outputs: list[StepOutput] = []
        self.results: dict[str, GenerationResult] = {}

    # ------------------------------------------------------------------ public API

    def add_request(self, request_id: str, request: GenerationRequest) -> None:
        """Queue a request. Raises ValueError (SourceTooLong included) for a request that can never run."""
        request.validate()
        if self._find(request_id) is not None:
            raise ValueError(f"request id {request_id!r} is already in use")
        mot = self.mot
        # Tokenize for every expert now, so a too-long source is refused at once, whichever experts get it.
        prompt_format = mot.format_for(request.prompt_template, request.prompt_format)
        prompt_ids = [mot.prompt_ids(e, request.source, request.prompt_template, request.prompt_format)
                      for e in range(mot.num_experts)]
        prefix = prompt_format.answer_prefix(request.source)
        for e, ids in enumerate(prompt_ids):
            limit = max_positions(mot.experts[e])
            if limit is not None and len(ids) + request.max_new_tokens > limit:
                raise SourceTooLong(
                    f"prompt ({len(ids)} tokens) + max_new_tokens ({request.max_new_tokens}) exceed expert "
                    f"{mot.expert_names[e]!r}'s context of {limit} positions",
                    limit=limit, actual=len(ids) + request.max_new_tokens, expert=mot.expert_names[e],
                )
        if request.force_active is not None and len(request.force_active) != mot.config.top_k:
            raise ValueError(f"force_active must name top_k={mot.config.top_k} experts, got {request.force_active}")
        if request.primary_rank >= mot.config.top_k:
            raise ValueError(f"primary_rank must be below top_k={mot.config.top_k}, got {request.primary_rank}")
        stop = KernelEnd(prefix, prompt_format.markers) if request.stop_at_eos and request.stop_at_kernel_end else None
        self.waiting.append(Sequence(request_id, request, prompt_ids, time.perf_counter(), answer_prefix=prefix,
                                     stop=stop))

    def abort(self, request_id: str) -> bool:
        """Stop a request; its slot is freed at the next step. False if it is unknown or already finished."""
        seq = self._find(request_id)
        if seq is None or seq.finish_reason is not None:
            return False
        self._aborted.add(request_id)
        return True

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.cohorts or self.slabs or self._aborted or self._pending_outputs)

    @property
    def num_running(self) -> int:
        return sum(len(c.live) for c in self.cohorts) + sum(len(slab.live) for slab in self.slabs.values())

    @property
    def decoding(self) -> str:
        """How this engine decodes, in words (the daemon logs it)."""
        if not self.static_cache:
            return "dynamic-cache cohorts (requests admitted together decode together)" + (
                ", prompt-lookup speculation" if self.prompt_lookup else "")
        parts = ["continuous batching in slabs", "CUDA graphs" if self.cuda_graphs else "eager"]
        int4_qkv, int4_mlp = getattr(self.mot, "_int4_fused", (0, 0)) if self.int4_kernels else (0, 0)
        parts += [name for name, on in (("fused norms", self.fused_norms), ("Triton GEMV", self.triton_gemv),
                                        ("Triton int4 products", self.int4_kernels),
                                        ("int4 q/k/v in one product", int4_qkv), ("int4 gated MLP fused", int4_mlp),
                                        ("fused q/k/v", self.fused_qkv), ("fused gated MLP", self.fused_mlp),
                                        ("fused rotary", self.fused_rotary),
                                        ("split-K decode attention", self.decode_attention),
                                        ("one-launch cache write", self.fused_cache_write),
                                        ("fused interaction", self.fused_interaction),
                                        ("residual adds folded", self.fused_residual),
                                        ("programmatic dependent launch", self.programmatic_launch),
                                        ("prefill graphs", self.prefill_graphs is not None),
                                        ("compiled layers", self.compile_layers)) if on]
        return ", ".join(parts)

    def substitutions(self, step: str = "decode"):
        """The kernel substitutions this engine uses (kernels/substitutions/) for one kind of forward:
        - "decode", a decode step (one position a row): all of them;
        - "prefill" (the primary's prompt, the secondaries' prompts): the fused norms and rotary, which take any
          number of positions — an eager prefill is bound by launching kernels, and they launch ~1/3 fewer;
        - "verify", a speculative step (a few positions a row, up to 16 rows in all): the prefill's, the fused
          q/k/v and gated MLP, whose rows kernels take them — a slab's kernels for its rows — and the split-K decode
          attention, which takes a few positions with their mask; the other decode kernels (cache write,
          interaction, residual folds) take one position a row."""
        if step not in ("decode", "prefill", "verify"):
            raise ValueError(f"a forward is a decode, prefill or verify step, got {step!r}")
        decoding, rows = step == "decode", step != "prefill"
        return decode_substitutions(self.mot, norms=self.fused_norms, gemv=self.triton_gemv and decoding,
                                    qkv=self.fused_qkv and rows, mlp=self.fused_mlp and rows,
                                    rotary=self.fused_rotary, attention=self.decode_attention and rows,
                                    cache_write=self.fused_cache_write and decoding,
                                    interaction=self.fused_interaction and decoding,
                                    residual=self.fused_residual and decoding, pdl=self.programmatic_launch)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @torch.no_grad()
    def step(self) -> list[StepOutput]:
        """Decode one token for every running request, then admit waiting requests (prefill: their first token).

        Decoding first frees the rows of requests that finish now, so waiting requests can take them at once."""
        outputs, self._pending_outputs = self._pending_outputs, []
        outputs += self._apply_aborts()
        for slab in list(self.slabs.values()):
            if slab.live:
                outputs += self._decode_slab(slab)
        for cohort in list(self.cohorts):
            if cohort.live:
                outputs += self._decode(cohort)
        self.cohorts = [c for c in self.cohorts if c.live]
        for key, slab in list(self.slabs.items()):
            outputs += self._resize_slab(key, slab)
        for cohort in self._admit():  # rows freed above are taken in the same step
            outputs += self._prefill(cohort)
        return outputs

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2), max_new_tokens: int = 3) -> float:
        """Capture and compile ahead of the first user (GPU): the encoder's routing graphs (batch 1, every length
        bucket); with compiled layers also every expert as primary, both modes, batch sizes 1 and 2 (torch.compile
        specialises size 1, so 2 stands for every larger batch). Returns seconds spent; 0.0 on CPU."""
        t0 = time.perf_counter()
        mot = self.mot
        source = "void warm_up(float* x, int n) { for (int i = 0; i < n; ++i) x[i] += 1.0f; }"
        captured = mot.encoder.warm_up([source])
        if not self.compile_layers:
            return time.perf_counter() - t0 if captured else 0.0
        for p in range(mot.num_experts):
            active = [p] + [e for e in range(mot.num_experts) if e != p][: mot.config.top_k - 1]
            for mode in MODES:
                for b in batch_sizes:
                    if b > self.max_batch_size:
                        continue
                    reqs = [GenerationRequest(source, mode=mode, max_new_tokens=max_new_tokens, stop_at_eos=False,
                                              force_active=active) for _ in range(b)]
                    self.generate(reqs)
        return time.perf_counter() - t0

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run requests to completion (a convenience over add/step). Raises NonFiniteError on NaN/Inf."""
        ids = [f"generate-{id(requests)}-{i}" for i in range(len(requests))]
        for rid, req in zip(ids, requests):
            self.add_request(rid, req)
        while self.has_unfinished():
            self.step()
        results = [self.results.pop(rid) for rid in ids]
        for r in results:
            if r.finish_reason == "error":
                raise NonFiniteError(r.error)
        return results

    # ------------------------------------------------------------------ internals

    def _find(self, request_id: str) -> Sequence | None:
        slab_rows = (s for slab in self.slabs.values() for s in slab.rows if s is not None)
        for seq in itertools.chain(self.waiting, *(c.seqs for c in self.cohorts), slab_rows):
            if seq.request_id == request_id:
                return seq
        return None

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        seq.finish_reason, seq.error, seq.t_done = reason, error, time.perf_counter()
        tok = self.mot.tokenizers[seq.primary] if seq.primary >= 0 else None
        text = tok.decode(strip_eos(seq.generated, self.mot.eos_token_ids[seq.primary]), skip_special_tokens=True) if tok else ""
        first = seq.t_first or seq.t_done
        self.results[seq.request_id] = GenerationResult(
            request_id=seq.request_id, text=text, token_ids=list(seq.generated), routing=seq.routing or {},
            finish_reason=reason, error=error, answer_prefix=seq.answer_prefix,
            draft_tokens=seq.drafted, accepted_tokens=seq.kept,
            num_prompt_tokens=len(seq.prompt_ids[seq.primary]) if seq.primary >= 0 else 0,
            num_generated_tokens=len(seq.generated),
            timings={
                "queue_s": (seq.t_first - seq.t_added) if seq.t_first else None,
                "first_token_s": first - seq.t_added,
                "total_s": seq.t_done - seq.t_added,
                "decode_tokens_per_s": (len(seq.generated) - 1) / (seq.t_done - first) if seq.t_done > first and len(seq.generated) > 1 else None,
            },
        )

    def _apply_aborts(self) -> list[StepOutput]:
        if not self._aborted:
            return []
        outputs = []
        for seq in [s for s in self.waiting if s.request_id in self._aborted]:
            self.waiting.remove(seq)
            self._finish(seq, "aborted")
            outputs.append(StepOutput(seq.request_id, [], "", True, "aborted"))
        for cohort in self.cohorts:
            done = [s for s in cohort.seqs if s.request_id in self._aborted]
            for seq in done:
                self._finish(seq, "aborted")
                outputs.append(StepOutput(seq.request_id, [], "", True, "aborted"))
            if done:
                compact(cohort, self.mot.device)
        for slab in self.slabs.values():
            for r in slab.live:
                if slab.rows[r].request_id in self._aborted:
                    self._finish(slab.rows[r], "aborted")
                    outputs.append(StepOutput(slab.rows[r].request_id, [], "", True, "aborted"))
                    slab.release_row(r)
        self._aborted.clear()
        return outputs

    def _admit(self) -> list[Cohort]:
        room = self.max_batch_size - self.num_running
        if room <= 0 or not self.waiting:
            return []
        admitted, self.waiting = self.waiting[:room], self.waiting[room:]
        mot = self.mot
        force = [s.request.force_active for s in admitted]
        if any(f is not None for f in force):  # route forced and free requests separately
            routings = [mot.route([s.request.source], noise=False, force_active=[f] if f else None,
                                  primary_ranks=[s.request.primary_rank], alone_rows=[s.request.ranked_alone])
                        for s, f in zip(admitted, force)]
            rows = [(r, 0) for r in routings]
        else:  # one batch; a candidate of another rank gets the router's active set with that expert first
            routing = mot.route([s.request.source for s in admitted], noise=False,
                                primary_ranks=[s.request.primary_rank for s in admitted],
                                alone_rows=[s.request.ranked_alone for s in admitted])
            rows = [(routing, b) for b in range(len(admitted))]
        groups: dict[tuple[int, str], list[tuple[Sequence, object, int]]] = {}
        for seq, (routing, b) in zip(admitted, rows):
            seq.routing = routing.info(b, mot.expert_names)
            seq.primary = seq.routing["primary_expert"]
            groups.setdefault((seq.primary, seq.request.mode), []).append((seq, routing, b))
        batches = []
        for key, members in groups.items():
            units = same_prompt(members, key[0])  # a function's candidates: one prefill between them
            if self.prefill_graphs is not None and 1 < len(units) <= GRAPH_PREFILL_MAX_GROUP:
                batches += [(key, unit) for unit in units]  # a graph replay each beats one eager batch
            else:
                batches.append((key, [m for unit in units for m in unit]))
        cohorts = []
        for (primary, mode), members in batches:
            rows = shared_rows([s.prompt_ids[primary] for s, _, _ in members])
            distinct = [members[rows.index(r)] for r in range(max(rows) + 1)]
            ctx = None
            if mode == "full":
                routing = stack_routings([(r, b) for _, r, b in distinct])
                alone = self.prefill_graphs is not None and len(distinct) == 1
                with self.substitutions("prefill"):  # the secondaries' prompts
                    ctx = mot.memory_context(
                        [s.request.source for s, _, _ in distinct], routing,
                        prompts=[s.prompt_ids for s, _, _ in distinct],
                        prompt_runner=self.prefill_graphs.prompt_states if alone else None,
                    )
            seqs = [s for s, _, _ in members]
            for s in seqs:
                s.rng = request_rng(s.request.seed, mot.experts[primary])
            shared = rows if len(distinct) < len(members) else None
            cohorts.append(Cohort(primary, mode, seqs, None, None, None, None, ctx, shared))
        return cohorts

    def _forward(self, cohort: Cohort, input_ids, position_ids, logits_to_keep=1) -> torch.Tensor:
        mot = self.mot
        model = mot.experts[cohort.primary]
        # one position a row: a decode step; a few, each row's next input and its draft: a verify step
        step = "decode" if input_ids.shape[1] == 1 else "verify" if logits_to_keep > 1 else "prefill"
        with mot.interacting(cohort.ctx), self.substitutions(step):
            out = model(
                input_ids=input_ids, attention_mask=cohort.attention_mask, position_ids=position_ids,
                use_cache=True, logits_to_keep=logits_to_keep, **{mot.cache_kwarg[cohort.primary]: cohort.cache},
            )
        if logits_to_keep > 1:  # a speculative step: every drafted position's logits
            return out.logits[:, -logits_to_keep:, :].float()  # (B, W, V)
        return out.logits[:, -1, :].float()  # (B, V)

    def _prefill(self, cohort: Cohort) -> list[StepOutput]:
        """The prompts of newly admitted requests (one batch, dynamic cache), then their first token. On the static
        path the unfinished ones then join their (primary, mode) slab; otherwise the batch becomes a cohort."""
        mot, p = self.mot, cohort.primary
        model = mot.experts[p]
        dev = next(model.parameters()).device
        prompts = cohort.distinct(p)  # requests with one prompt (candidates) prefill it once
        columns = max(len(pr) for pr in prompts) + max(s.request.max_new_tokens for s in cohort.seqs)
        to_slab = self._slab_path(p) and supports(model, bucket(columns, MIN_COLUMNS))
        out = None
        if to_slab and self.prefill_graphs is not None and len(prompts) == 1:
            out = self.prefill_graphs.prefill(p, cohort.mode, prompts[0], cohort.ctx)
        if out is not None:  # one prompt, right-padded in the graph: its first L cache columns are the prompt's
            L = len(prompts[0])
            cohort.attention_mask = torch.ones(1, L, dtype=torch.long, device=dev)
            cohort.cache = PrefilledCache([k[:, :, :L] for k in out.keys], [v[:, :, :L] for v in out.values])
            cohort.positions = torch.full((1, 1), L, dtype=torch.long, device=dev)
            if cohort.ctx is not None:
                cohort.ctx.nonfinite = out.nonfinite
            logits = out.logits
        else:
            # left padding: every row's next token lands at the same column
            ids, mask = pad_batch(prompts, mot.tokenizers[p].pad_token_id, dev, left=True)
            position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
            cohort.attention_mask = mask
            cohort.cache = DynamicCache(config=model.config)
            logits = self._forward(cohort, ids, position_ids)
            cohort.positions = position_ids[:, -1:] + 1
        if cohort.shared is not None:
            logits = share_prefill(cohort, logits)
        now = time.perf_counter()
        for s in cohort.seqs:
            s.t_first = now
        outputs = self._sample_and_advance(cohort, logits)  # finished rows leave the cohort (and its cache)
        if not cohort.seqs:
            return outputs
        if to_slab:  # the joiners copy the prompt's keys and values now, before any other prefill replays
            outputs += self._place((p, cohort.mode), joiners_of(cohort))
        else:
            self.cohorts.append(cohort)
        return outputs

    def _slab_path(self, primary: int) -> bool:
        if not self.static_cache:
            return False
        return not self.cuda_graphs or next(self.mot.experts[primary].parameters()).device == self.mot.device

    def _place(self, key: tuple[int, str], joiners: list[Joiner]) -> list[StepOutput]:
        """Join the (primary, mode) slab, or move its rows and the joiners into a slab of a bigger shape."""
        slab = self.slabs.get(key)
        if slab is not None and slab.target_column(joiners) is not None:
            slab.join(joiners)  # rows with tokens in flight count one column more: target_column() stays safe
            return []
        return self._move(key, slab, joiners)

    def _move(self, key: tuple[int, str], slab: DecodeSlab | None, joiners: list[Joiner] = ()) -> list[StepOutput]:
        """Move a slab's live rows (once their tokens in flight have landed) and any joiners into a slab of the shape
        that holds them; the old slab goes to the pool. Returns the outputs of the tokens that landed."""
        outputs = self._flush(slab) if slab is not None else []
        everyone = (slab.export_rows() if slab is not None else []) + list(joiners)
        if everyone:
            new = self._slab_for(key, everyone)
            new.join(everyone)  # before the old slab is retired: the exported rows are views of its cache
            self.slabs[key] = new
        else:
            del self.slabs[key]
        if slab is not None:
            self._retire(slab)
        return outputs

    def _slab_for(self, key: tuple[int, str], joiners: list[Joiner]) -> DecodeSlab:
        """A slab of the smallest power-of-two shape that holds these joiners: from the pool, else a new one."""
        primary, mode = key
        left = max(j.length for j in joiners)
        right = max(remaining_columns(j.seq) for j in joiners)
        memory = max(j.memory_length for j in joiners)
        shape = SlabShape(
            primary, mode, rows=bucket(len(joiners)), columns=bucket(left + right, MIN_COLUMNS),
            memory=bucket(memory, MIN_MEMORY) if mode == "full" and memory else 0,
        )
        for i, pooled in enumerate(self._slab_pool):
            if pooled.shape == shape:
                return self._slab_pool.pop(i)
        return DecodeSlab(self, shape)

    def _retire(self, slab: DecodeSlab) -> None:
        """An emptied (or moved-out) slab goes to the pool with its graph; the pool keeps the newest few."""
        slab.reset()
        self._slab_pool.append(slab)
        del self._slab_pool[: -SLAB_POOL_SIZE]

    def _resize_slab(self, key: tuple[int, str], slab: DecodeSlab) -> list[StepOutput]:
        """Retire an empty slab; move a mostly empty one (a quarter or less of its rows live) into a smaller one."""
        live = len(slab.live)
        if live == 0:  # every request ended: tokens still in flight belong to finished rows only
            del self.slabs[key]
            self._retire(slab)
            return []
        if slab.shape.rows >= 4 and live <= slab.shape.rows // 4:
            return self._move(key, slab)
        return []

    def _decode(self, cohort: Cohort) -> list[StepOutput]:
        if self.prompt_lookup and can_roll_back(cohort.cache):
            drafts = drafts_for(cohort.seqs, cohort.primary, self.lookup_settings)
            if any(drafts):
                outputs = decode_with_drafts(self, cohort, drafts)
                if any(s.finish_reason for s in cohort.seqs):
                    compact(cohort, self.mot.device)
                return outputs
        cohort.attention_mask = torch.cat([cohort.attention_mask, torch.ones_like(cohort.next_input)], dim=1)
        logits = self._forward(cohort, cohort.next_input, cohort.positions)
        cohort.positions = cohort.positions + 1
        return self._sample_and_advance(cohort, logits)

    def _decode_slab(self, slab: DecodeSlab) -> list[StepOutput]:
        """Launch this step, then hand out the previous step's tokens while the GPU runs it.

        The next input is fed on the device (sampled ids -> the slab's input buffer), so the host reads a step's
        tokens one step late, from a pinned copy: the GPU never waits for Python's bookkeeping (detokenizing,
        finishing rows, the daemon's sockets). The price is one extra row-step for a request that ends by EOS —
        computed, then ignored. When every live row is known to end with the tokens already in flight (length),
        no step is launched."""
        landed = []
        if self.prompt_lookup and len(slab.live) <= self.lookup_settings.max_slab_rows:
            # drafts start from every row's latest token: the tokens in flight land first
            landed = self._flush(slab)
            room = slab.wide_room() - 1  # draft tokens a verify step can take
            live = [slab.rows[r] for r in slab.live]
            drafts = drafts_for(live, slab.shape.primary, self.lookup_settings) if live and room > 0 else []
            if any(drafts):
                return landed + decode_slab_with_drafts(self, slab, [d[:room] for d in drafts])
            if not live:
                return landed
        pending, slab.pending = slab.pending, None
        if pending is not None and all(ends_with_pending(slab, r, pending) for r in slab.live):
            return self._collect(slab, pending)
        logits, next_ids, finite = slab.decode()  # (C, V), (C,) greedy ids already fed back, (C,)
        for b in sample_live(slab.rows, logits, next_ids):
            slab.feed(b, next_ids[b])
        slab.pending = slab.stage(next_ids, finite)
        return landed + (self._collect(slab, pending) if pending is not None else [])

    def _collect(self, slab: DecodeSlab, pending) -> list[StepOutput]:
        """The host's half of a slab step: its tokens to their requests; rows that finished are freed."""
        rows, next_list, finite_list = pending.wait()
        outputs = self._emit(slab.shape.primary, rows, next_list, finite_list)
        for r, seq in enumerate(slab.rows):
            if seq is not None and seq.finish_reason is not None:
                slab.release_row(r)
        return outputs

    def _flush(self, slab: DecodeSlab) -> list[StepOutput]:
        """Collect a slab's tokens in flight now (before its rows move to another slab)."""
        pending, slab.pending = slab.pending, None
        return self._collect(slab, pending) if pending is not None else []

    def _sample_and_advance(self, cohort: Cohort, logits: torch.Tensor) -> list[StepOutput]:
        flag = cohort.ctx.nonfinite if cohort.ctx is not None else None
        if cohort.ctx is not None:
            cohort.ctx.nonfinite = None
        outputs, next_ids = self._sample_rows(cohort.primary, cohort.seqs, logits, flag)
        cohort.next_input = next_ids.view(-1, 1).to(cohort.attention_mask.device)
        if any(s.finish_reason for s in cohort.seqs):
            compact(cohort, self.mot.device)
        return outputs

    def _sample_rows(self, primary: int, rows: list, logits: torch.Tensor, flag) -> tuple[list[StepOutput], torch.Tensor]:
        """Next tokens for the live rows of `rows` (None or finished rows are computed and ignored); finishes rows."""
        next_ids, finite = next_tokens(rows, logits, flag)
        next_list, finite_list = next_ids.tolist(), finite.tolist()  # the one host sync of the step
        return self._emit(primary, rows, next_list, finite_list), next_ids

    def _emit(self, primary: int, rows: list, next_list: list[int], finite_list: list[bool]) -> list[StepOutput]:
        """Append each live row's token to its request, finish requests (EOS, the answer's end — decoding/stopping.py
        —, length, NaN/Inf), stream text."""
        mot = self.mot
        tok = mot.tokenizers[primary]
        eos = mot.eos_token_ids[primary]
        outputs = []
        for b, s in enumerate(rows):
            if s is None or s.finish_reason is not None:
                continue
            if not finite_list[b]:
                msg = f"NaN/Inf in the logits of expert {mot.expert_names[primary]!r} at generated token {len(s.generated)}"
                self._finish(s, "error", msg)
                outputs.append(StepOutput(s.request_id, [], "", True, "error", msg))
                continue
            t = next_list[b]
            s.generated.append(t)
            emitted = s.emitted
            reason = None
            if s.request.stop_at_eos and t in eos:
                reason = "eos"
            else:
                delta = detokenize_incrementally(tok, s)
                if s.stop is not None and s.stop.feed(delta):
                    reason = "stop"
                elif len(s.generated) >= s.request.max_new_tokens:
                    reason = "length"
            if reason:
                self._finish(s, reason)
                final = self.results[s.request_id].text
                delta = final[len(emitted) :] if final.startswith(emitted) else ""
                s.emitted = final
            outputs.append(StepOutput(s.request_id, [t], delta, reason is not None, reason))
        return outputs
