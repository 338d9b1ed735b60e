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
# "fast": the primary alone after routing; "full": the experts interact at every generated token. Full by measurement:
# the trained layers act only there (pocket checkpoint on exec_dev: 80% of kernels parallel in full mode, 2% in fast
# mode, which is the primary alone; BENCHMARKS.md, "Quality"), at 0.89x fast mode's tokens/s on an H100. An untrained
# MoT gives the same tokens in both modes (the interaction is zero-gated at init).
MODE = "full"
MODES = ("fast", "full")

# Candidates of a translation, where it can choose among them (a C++ compiler to verify them with): the greedy one
# first, then each other active expert's greedy one alone, then sampled ones (decoding/candidates.py); the
# first verified candidate wins (daemon/translation.py). 1 = the greedy one only.
# Four: enough for a sampled candidate to fix a greedy slip, few enough that a function's candidates share one
# prefill and decode as rows of one batch.
CANDIDATES = 4
# The most candidates a request may ask for (the wire format's bound): each is a row of the decoding batch.
CANDIDATES_LIMIT = 16
# How the candidates after the first sample: warm enough to differ from the greedy one, cool enough to stay on
# topic; each has its own seed (the request's seed + its index, or its index), so a translation is reproducible.
CANDIDATE_TEMPERATURE = 0.7
CANDIDATE_TOP_P = 0.95
# Whether a translation's candidates are verified (kernelcheck.verify: syntax, compile, differential test):
# "auto" = where a C++ compiler exists (the GPU backend where nvcc and a GPU are, else the CPU one); "off" = never.
VERIFY = "auto"
VERIFY_CHOICES = ("auto", "off")
# Seconds a translation's verification may take, all its candidates together; past it the result says
# "unavailable: verification took longer than ... s" (a CPU build of a kernel takes ~5 s, a cold one ~20 s).
VERIFY_TIMEOUT_S = 60.0
