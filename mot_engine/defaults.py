"""The one definition of each user-facing default: every surface (the Python API, the daemon's wire protocol and
client, the batch CLI, the language server's settings, the trainer and evaluator) reads these names.

Torch-free on purpose: the language server and the daemon's light modules import it. Where a surface needs another
value it says why beside it (for instance the daemon's own cap on what a request may ask for).
"""

from __future__ import annotations

# Tokens a translation may generate. Kernels of the functions users translate are short (the BabelTower
# reference kernels need 30-250 tokens of the seed tokenizers); generation stops where the kernel ends, so this is
# a cap for the rare long function, not the usual length.
MAX_NEW_TOKENS = 512
# The most a daemon lets one request ask for (its `--max-new-tokens`); a larger ask is refused with the limit.
MAX_NEW_TOKENS_LIMIT = 4096
# Greedy decoding: the translation of a function is reproducible, and greedy is the first candidate.
TEMPERATURE = 0.0
TOP_P = 1.0
# "fast": the primary alone after routing; "full": the experts interact at every generated token.
MODE = "fast"
MODES = ("fast", "full")
