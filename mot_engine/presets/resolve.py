"""Where a preset's experts and encoder come from (`resolve_preset`), and which preset to use when none is named
(`default_preset`). Light: naming, finding and checking, nothing loaded (the CLIs check arguments with it before any
model loads); `registry.build_mot` builds the model.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from mot_engine import envs
from mot_engine.errors import PresetUnavailable
from mot_engine.model.config import ExpertConfig
from mot_engine.presets import pocket
from mot_engine.presets.names import PRESETS, SEED_7B_EXPERTS, SEED_ENCODER, SEED_EXPERTS
from mot_engine.presets.tiny import TINY_ENCODER, TINY_EXPERTS, ensure_tiny

log = logging.getLogger(__name__)


def _hub_experts(ids: list[str]) -> list[ExpertConfig]:
    return [ExpertConfig(name=i.split("/")[-1], path=i) for i in ids]


def hub_cached(repo_id: str) -> bool:
    """Whether a hub model is in the local HF cache (so it loads offline)."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception as e:  # a broken cache is "not cached"; say why at debug level
        log.debug("HF cache lookup of %s failed: %s", repo_id, e)
        return False


def seed_configs_path() -> Path:
    """The published configs of the seed experts: $MOT_SEED_CONFIGS or ../shared/data next to the repository."""
    override = envs.seed_configs_override()
    if override is not None:
        return override
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "seed_expert_configs.json"


def resolve_preset(name: str) -> tuple[list[ExpertConfig], str]:
    """(expert configs, encoder id or folder) of a preset; PresetUnavailable says how to get what is missing."""
    if name == "seed":
        return _hub_experts(SEED_EXPERTS), SEED_ENCODER
    if name == "seed-7b":
        return _hub_experts(SEED_7B_EXPERTS), SEED_ENCODER
    if name == "tiny":
        root = ensure_tiny()
        experts = [ExpertConfig(name=n, path=str(root / n)) for n in TINY_EXPERTS]
        return experts, str(root / TINY_ENCODER / "st")
    if name == "seed-random":
        path = seed_configs_path()
        if not path.exists():
            raise PresetUnavailable(f"seed-random needs the published seed configs at {path} (set MOT_SEED_CONFIGS)")
        configs = json.loads(path.read_text())
        root = ensure_tiny()
        # Random-weight experts need some tokenizer: the tiny ones (their ids fit in every seed vocabulary).
        experts = [
            ExpertConfig(name=i.split("/")[-1], config_dict=configs[i], tokenizer_path=str(root / tiny))
            for i, tiny in zip(SEED_EXPERTS, TINY_EXPERTS)
        ]
        return experts, str(root / TINY_ENCODER / "st")
    if name == "pocket":
        missing = pocket.missing_pocket_packages()
        if missing:
            raise PresetUnavailable(
                f"the pocket preset needs the packages {', '.join(missing)}: run {pocket.POCKET_INSTALL_COMMAND}"
            )
        return pocket.pocket_expert_configs(), pocket.pocket_encoder_path()
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def default_preset() -> str:
    """`seed` when its weights are in the local HF cache, else `pocket`; one line on stderr says which and why."""
    if all(hub_cached(i) for i in SEED_EXPERTS + [SEED_ENCODER]):
        choice, why = "seed", "its weights are in the local Hugging Face cache"
    else:
        choice, why = "pocket", "the seed experts are not in the local Hugging Face cache"
    print(f"mot: using preset '{choice}' ({why}); choose another with --preset {{{','.join(PRESETS)}}}", file=sys.stderr)
    return choice
