"""Where the engine keeps converted and generated model folders (platform conventions via platformdirs)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$MOT_CACHE_DIR` if set, else the user cache directory (e.g. ~/.cache/mot-cuda on Linux)."""
    env = os.environ.get("MOT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mot-cuda"))
