"""`EngineConfig`: what a daemon serves (preset, checkpoint, device) and its limits. Torch-free: the daemon's CLI
builds one before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mot_engine.defaults import MAX_NEW_TOKENS_LIMIT, VERIFY_TIMEOUT_S
from mot_engine.envs import RuntimeConfig


@dataclass
class EngineConfig:
    """What the daemon serves and its limits. Validated by `validate()` (ValueError naming the field)."""

    preset: str | None = None
    checkpoint: str | None = None
    device: str | None = None  # None: cuda if available else cpu
    dtype: str | None = None  # None: the engine's default (bf16 on GPU, fp32 on CPU)
    quantization: str | None = None  # "int4" | "4bit" | "8bit" (mot_engine.model.config); None: unquantized
    max_batch_size: int = 16  # sequences decoded together
    max_queue: int = 64  # translations accepted beyond the running batch; more -> overloaded
    max_source_chars: int = 200_000
    max_new_tokens: int = MAX_NEW_TOKENS_LIMIT  # the most one request may ask for (mot_engine.defaults)
    default_timeout_s: float = 600.0
    batch_wait_s: float = 0.005  # when idle, gather requests arriving less than this apart into one batch...
    batch_wait_max_s: float = 0.05  # ...for at most this long
    max_pending_routes: int = 256
    route_batch_size: int = 64
    extra_limits: dict[str, Any] = field(default_factory=dict)  # shown in status (e.g. the server's frame limit)
    # Seed of torch's RNG before the model is built: without a checkpoint the router and interaction layers are
    # random, and this makes their routing the same on every start (and benchmarks repeatable). None: unseeded.
    init_seed: int | None = 0
    # How the engine decodes (mot_engine/envs.py); `mot-daemon serve` reads it from the environment and logs it.
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Whether this daemon verifies kernels (builds and runs them, sandboxed, against the user's function); off
    # (`serve --no-verify`): a daemon that must never run generated code, and translations generate one candidate.
    verify: bool = True
    verify_timeout_s: float = VERIFY_TIMEOUT_S  # per translation, all its candidates together
    # Verifications at once, each on a thread of its own (its builds use a core or two): more would slow decoding.
    verify_workers: int = 2

    def validate(self) -> None:
        for name in ("max_batch_size", "max_new_tokens", "max_source_chars", "max_pending_routes", "route_batch_size",
                     "verify_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if not self.default_timeout_s > 0:
            raise ValueError(f"default_timeout_s must be > 0, got {self.default_timeout_s!r}")
        if not self.verify_timeout_s > 0:
            raise ValueError(f"verify_timeout_s must be > 0, got {self.verify_timeout_s!r}")
        if not self.batch_wait_s >= 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s!r}")
        if not self.batch_wait_max_s >= 0:
            raise ValueError(f"batch_wait_max_s must be >= 0, got {self.batch_wait_max_s!r}")

    @property
    def capacity(self) -> int:
        """Translations in flight at most: the running batch plus the queue."""
        return self.max_batch_size + self.max_queue

