"""`translate`: one source in, its kernel out — the one-call API over a Generator."""

from __future__ import annotations

from dataclasses import dataclass

from kernelcheck.extract import extract_kernel

from mot_engine import defaults
from mot_engine.decoding.generator import Generator
from mot_engine.decoding.requests import GenerationRequest
from mot_engine.envs import RuntimeConfig
from mot_engine.model.mixture import MixtureOfThoughts


@dataclass(frozen=True)
class Translation:
    status: str  # what came out (kernelcheck.extract): "kernel", "truncated" or "no_kernel"
    kernel: str  # the kernel (with its helpers and launcher); "" unless status is "kernel"
    answer: str  # the model's whole answer (the prompt's answer prefix, then what it generated)
    primary_expert: int
    routing: dict
    finish_reason: str  # "stop" (the kernel ended), "eos", "length", ...
    notes: tuple[str, ...] = ()


def translate(
    mot: MixtureOfThoughts,
    source_text: str,
    prompt_template: str | None = None,
    max_new_tokens: int = defaults.MAX_NEW_TOKENS,
    temperature: float = defaults.TEMPERATURE,
    top_p: float = defaults.TOP_P,
    *,
    mode: str = defaults.MODE,
    seed: int | None = None,
    prompt_format: str | None = None,
    runtime: RuntimeConfig | None = None,
) -> Translation:
    """Translate one C/C++ function to a CUDA kernel. Greedy unless `temperature` > 0. The result's `status` says
    what came out; `kernel` is empty unless it is a kernel (C++ is never passed off as CUDA)."""
    req = GenerationRequest(
        source=source_text, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        seed=seed, prompt_template=prompt_template, prompt_format=prompt_format,
    )
    result = Generator(mot, runtime=runtime).generate([req])[0]
    extraction = extract_kernel(result.answer)
    return Translation(status=extraction.status, kernel=extraction.code, answer=result.answer,
                       primary_expert=result.routing["primary_expert"], routing=result.routing,
                       finish_reason=result.finish_reason, notes=extraction.notes)
