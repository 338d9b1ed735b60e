"""Where the presets keep converted and generated model folders (platform conventions via platformdirs)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir

from mot_engine import envs


def cache_dir() -> Path:
    """`$MOT_CACHE_DIR` if set, else the user cache directory (e.g. ~/.cache/mot-cuda on Linux)."""
    return envs.cache_dir_override() or Path(user_cache_dir("mot-cuda"))
