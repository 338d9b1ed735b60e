"""What a caller gives the Generator (`GenerationRequest`) and what it gets back (`StepOutput` per step,
`GenerationResult` when a request ends)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mot_engine import defaults

RANK_BY = ("mode", "router")


@dataclass
class GenerationRequest:
    source: str
    mode: str = defaults.MODE
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    temperature: float = defaults.TEMPERATURE  # 0 = greedy
    top_p: float = defaults.TOP_P
    seed: int | None = None
    prompt_template: str | None = None  # a template with {source} instead of the model's prompt format
    prompt_format: str | None = None  # a named prompt format (model/prompts.py) instead of the model's own
    stop_at_eos: bool = True  # False: generate exactly max_new_tokens, no stop of any kind (benchmarks)
    stop_at_kernel_end: bool = True  # end the answer where its kernel ends, or at the format's marker
    force_active: list[int] | None = None  # analysis/tests: the active experts, primary first
    # Which of the router's active experts is the primary: 0 the router's own choice, r its r-th (the others stay
    # secondaries, in order). A translation's candidates try each (decoding/candidates.py).
    primary_rank: int = 0
    # How a fast-mode row ranks its experts: "mode" fast mode's own ranking (the router's alone head where it has
    # one, else the router's), "router" the router's (a full-mode translation's candidates that decode alone: the
    # router's other active experts, decodings/candidates.py). Full-mode rows always take the router's.
    rank_by: str = "mode"

    @property
    def ranked_alone(self) -> bool:
        """Whether this row's experts are ranked for decoding alone (fast mode's own ranking)."""
        return self.mode == "fast" and self.rank_by == "mode"

    def validate(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("the source is empty")
        if self.mode not in defaults.MODES:
            raise ValueError(f"mode must be one of {defaults.MODES}, got {self.mode!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.primary_rank, int) or self.primary_rank < 0:
            raise ValueError(f"primary_rank must be a non-negative integer, got {self.primary_rank!r}")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {self.rank_by!r}")
        if self.primary_rank and self.force_active is not None:
            raise ValueError("primary_rank and force_active both choose the primary: give one")


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None = None  # "eos" | "stop" (the answer's end) | "length" | "aborted" | "error"
    error: str | None = None


@dataclass
class GenerationResult:
    request_id: str
    text: str
    token_ids: list[int]
    routing: dict
    finish_reason: str
    num_prompt_tokens: int
    num_generated_tokens: int
    timings: dict = field(default_factory=dict)
    error: str | None = None
    answer_prefix: str = ""  # the start of the answer the prompt wrote (the kernel's head); `text` continues it
    draft_tokens: int = 0  # prompt-lookup speculation: tokens drafted for this request, and how many were kept
    accepted_tokens: int = 0

    @property
    def answer(self) -> str:
        """The whole answer: the prompt's answer prefix, then the generated text."""
        return self.answer_prefix + self.text
