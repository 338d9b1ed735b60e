"""The `tiny` preset: three random-weight experts of real architectures (Qwen2, Llama, Starcoder2) with three
different byte-level BPE tokenizers trained offline, and a tiny random sentence-transformers encoder.

They are written to a folder once (a lock + an atomic rename, so concurrent test workers and a killed build are
safe) and then loaded through exactly the same `from_pretrained(folder)` path as hub models. Building them
(`tiny_build.py`) needs transformers, tokenizers and sentence-transformers; naming and finding them does not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from mot_engine.presets.paths import cache_dir

log = logging.getLogger(__name__)

TINY_VERSION = "v1"
COMPLETE_MARKER = "TINY_COMPLETE.json"

# name -> (model_type, vocab size, config overrides, tokenizer specials)
TINY_EXPERTS = {
    "tiny-qwen2": dict(
        model_type="qwen2", vocab=420, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, add_bos=False, eos="<|endoftext|>", bos=None,
    ),
    "tiny-llama": dict(
        model_type="llama", vocab=300, hidden_size=48, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=False, add_bos=True, eos="</s>", bos="<s>",
    ),
    "tiny-starcoder2": dict(
        model_type="starcoder2", vocab=520, hidden_size=96, intermediate_size=192, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, add_bos=False, eos="<|endoftext|>", bos=None,
    ),
}
TINY_LAYERS = 4
TINY_ENCODER = "tiny-encoder"


def default_tiny_root() -> Path:
    return cache_dir() / f"tiny-{TINY_VERSION}"


def ensure_tiny(root: Path | None = None, seed: int = 0) -> Path:
    """Build the tiny experts + encoder under `root` once; return `root`. Safe under concurrency and kills."""
    root = Path(root) if root is not None else default_tiny_root()
    if (root / COMPLETE_MARKER).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / COMPLETE_MARKER).exists():
            return root
        if root.exists():  # a build that was killed half-way: never used, rebuilt
            log.warning("removing incomplete tiny build at %s", root)
            shutil.rmtree(root)
        # heavy (transformers, tokenizers, sentence-transformers): only when the folder must be built
        from mot_engine.presets.tiny_build import build_encoder, build_expert, corpus_lines

        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
        try:
            corpus = corpus_lines()
            for i, (name, spec) in enumerate(TINY_EXPERTS.items()):
                build_expert(name, spec, tmp / name, corpus, seed + i, TINY_LAYERS)
            build_encoder(tmp / TINY_ENCODER, corpus, seed + 100)
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
