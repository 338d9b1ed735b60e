"""Every environment variable the project reads, declared once, and the one place that reads them.

- `RuntimeConfig` holds the decode-path switches: one frozen dataclass field per switch (its variable, default and
  meaning in the field's metadata). `RuntimeConfig.from_env()` reads them; the Generator, the router's encoder
  graphs and the benchmarks take a `RuntimeConfig` as an argument, so tests and benchmarks change behaviour by
  passing one (`dataclasses.replace(runtime, fused_norms=False)`), never by writing `os.environ`.
- The other variables (where caches live, the seed configs, the daemon's endpoint) are read by the functions below.

Torch-free: the daemon's CLI and the language server import it. `switch_table()` gives the table README's "Speed"
section holds between its `switches` markers (tests/test_envs.py keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mot_engine.errors import InvalidEnvironment

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _switch(variable: str, default: bool, meaning: str):
    return field(default=default, metadata={"env": variable, "meaning": meaning})


@dataclass(frozen=True)
class RuntimeConfig:
    """How the decoding engine runs (none of it changes what a request computes, except where said).

    Each kernel substitution is installed only where a probe shows it computes the same function as the module it
    stands in for, and only inside the Generator's forwards; turning one off is for comparisons and for expert
    families none of them fits."""

    cuda_graphs: bool = _switch(
        "MOT_CUDA_GRAPHS", True,
        "On a GPU: decode in slabs (continuous batching) whose steps replay CUDA graphs. Off: eager decoding, "
        "requests admitted together decode together")
    slabs: bool = _switch(
        "MOT_SLABS", False,
        "Continuous batching in slabs also on the CPU, run eagerly (on a GPU slabs come with `MOT_CUDA_GRAPHS`)")
    compile_layers: bool = _switch(
        "MOT_COMPILE", False,
        "Compiled decoder layers (torch.compile; ~15-80 s per expert and batch-size class at start-up, cached by "
        "inductor). Slower than the default now (0.8x): kept for expert families none of the kernels below fits")
    compile_whole_layers: bool = _switch(
        "MOT_COMPILE_WHOLE_LAYERS", True,
        "With `MOT_COMPILE`: compile whole decoder layers; off: only their norms and MLP (one graph per family)")
    fused_norms: bool = _switch(
        "MOT_FUSED_NORMS", True, "The experts' RMSNorms as one fused kernel (decode steps and prefills)")
    triton_gemv: bool = _switch(
        "MOT_TRITON_GEMV", True, "One-row linear layers through the Triton GEMV (cuBLAS runs M=1 products slowly)")
    fused_qkv: bool = _switch(
        "MOT_FUSED_QKV", True,
        "An attention's q, k and v products in one launch (also for a slab's 2-16 rows; int4: one stacked product)")
    fused_mlp: bool = _switch(
        "MOT_FUSED_MLP", True,
        "A gated MLP's gate and up products with the SiLU in one kernel (also 2-16 rows; int4 too)")
    fused_rotary: bool = _switch(
        "MOT_FUSED_ROTARY", True, "The rotary embedding of q and k in one launch (decode steps and prefills)")
    decode_attention: bool = _switch(
        "MOT_DECODE_ATTENTION", True, "One-query attention over the cache by the split-K Triton kernel")
    fused_cache_write: bool = _switch(
        "MOT_FUSED_CACHE_WRITE", True, "A slab layer's key and value written into the cache in one launch")
    fused_interaction: bool = _switch(
        "MOT_FUSED_INTERACTION", True, "The interaction's decode step as nine kernels a stack instead of ~28")
    fused_residual: bool = _switch(
        "MOT_FUSED_RESIDUAL", True,
        "A Llama-family layer's residual adds folded into its post-attention norm and its down projection")
    pdl: bool = _switch(
        "MOT_PDL", True,
        "Programmatic dependent launch of those Triton kernels (Hopper and newer; probed per GPU): each kernel "
        "is scheduled while the one before it finishes")
    prefill_graphs: bool = _switch(
        "MOT_PREFILL_GRAPHS", True,
        "A request admitted alone (or in a group of up to 8) prefills by replaying a CUDA graph captured per "
        "prompt-length bucket")
    encoder_graphs: bool = _switch(
        "MOT_ENCODER_GRAPHS", True, "Routing replays CUDA graphs of the frozen sentence encoder (GPU)")
    prompt_lookup: bool = _switch(
        "MOT_PROMPT_LOOKUP", True,
        "Prompt-lookup speculation, on both decode paths (cohorts; slabs, with a CUDA graph per verify width): "
        "tokens drafted from the prompt, kept where decoding agrees (greedy output unchanged)")
    prompt_lookup_cuda: bool = _switch(
        "MOT_PROMPT_LOOKUP_CUDA", False,
        "Prompt-lookup speculation on CUDA devices too (with MOT_PROMPT_LOOKUP): off until a GPU measurement "
        "shows it wins there (its GPU parity test passes)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RuntimeConfig":
        """The switches as the environment sets them (unset: the default). A value that is not one of
        1/0, true/false, yes/no, on/off raises `InvalidEnvironment` naming the variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse_bool(f.metadata["env"], raw)
        return cls(**values)

    def changed(self) -> dict[str, bool]:
        """The switches that differ from their defaults, by variable name."""
        return {f.metadata["env"]: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def describe(self) -> str:
        """One line for a log: every switch and its value, those changed from the default marked with `*`."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.metadata['env']}={int(value)}{'*' if value != f.default else ''}")
        return " ".join(parts)


# The decode-step kernel substitutions in the order they were added (the benchmarks' ladder turns them on one by one;
# with all of them on and `prefill_graphs`, the default engine).
SUBSTITUTIONS = ("fused_norms", "triton_gemv", "fused_qkv", "fused_rotary", "fused_mlp", "decode_attention",
                 "fused_cache_write", "fused_interaction", "fused_residual", "pdl")


def _parse_bool(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidEnvironment(f"{variable}={raw!r}: expected 1 or 0 (or true/false, yes/no, on/off)")


def switch_table() -> str:
    """The Markdown table of the switches (README's "Speed" section holds it; a test keeps the two equal)."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for f in dataclasses.fields(RuntimeConfig):
        rows.append(f"| `{f.metadata['env']}` | {int(f.default)} | {f.metadata['meaning']} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- other variables

CACHE_DIR = "MOT_CACHE_DIR"  # converted and generated models (default: the user cache directory)
SEED_CONFIGS = "MOT_SEED_CONFIGS"  # the published seed configs, for the `seed-random` preset
DAEMON_ENDPOINT = "MOT_DAEMON_ENDPOINT"  # the daemon's endpoint (default: an ipc socket in the runtime dir)


def cache_dir_override(environ: Mapping[str, str] | None = None) -> Path | None:
    """`$MOT_CACHE_DIR`, if set."""
    value = (os.environ if environ is None else environ).get(CACHE_DIR)
    return Path(value).expanduser() if value else None


def seed_configs_override(environ: Mapping[str, str] | None = None) -> Path | None:
    """`$MOT_SEED_CONFIGS`, if set."""
    value = (os.environ if environ is None else environ).get(SEED_CONFIGS)
    return Path(value) if value else None


def daemon_endpoint_override(environ: Mapping[str, str] | None = None) -> str | None:
    """`$MOT_DAEMON_ENDPOINT`, if set."""
    return (os.environ if environ is None else environ).get(DAEMON_ENDPOINT) or None
