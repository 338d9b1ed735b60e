"""`translate`: one source in, its translation out — the one-call API over a Generator."""

from __future__ import annotations

from mot_engine import defaults
from mot_engine.decoding.generator import Generator
from mot_engine.decoding.requests import GenerationRequest
from mot_engine.envs import RuntimeConfig
from mot_engine.model.mixture import MixtureOfThoughts


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
    runtime: RuntimeConfig | None = None,
) -> tuple[str, int]:
    """Translate one C/C++ source to CUDA -> (cuda_code, primary_expert_index). Greedy unless `temperature` > 0."""
    req = GenerationRequest(
        source=source_text, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        seed=seed, prompt_template=prompt_template,
    )
    result = Generator(mot, runtime=runtime).generate([req])[0]
    return result.text, result.routing["primary_expert"]
