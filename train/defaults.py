"""The trainer's and the evaluator's own defaults, one definition each: the command lines' flags and help texts,
model building and the evaluation functions read them from here.

The user-facing generation defaults shared with the daemon, the language server and the editors (mode,
temperature, the generation budget of a translation) are in `mot_engine/defaults.py`; where training keeps another
value, it says why below.
"""

from __future__ import annotations

# ---- data
TRAIN_RATIO = 0.8  # share of the pairs in the training split
TEST_RATIO = 0.1  # share in the test split; validation gets the rest
SEED = 42  # seed of the split, the data order and the router noise
MAX_LENGTH = 512  # longest prompt + target + EOS, in tokens (longest tokenization among the experts)

# ---- model (used when neither the command line nor a checkpoint says otherwise)
NUM_STACKS = 4  # stacks per expert
TOP_K = 2  # active experts per source, primary included
LAMBDA_CONSISTENCY = 0.05  # weight of the routing consistency loss

# ---- generation and evaluation
# Generated tokens per translation when training and evaluation score generations (epoch-end validation, the test
# split, mot-eval). Not mot_engine.defaults.MAX_NEW_TOKENS (512, a translation's cap for users): these runs
# generate for every pair of a split, and the original training scripts scored with 256 — the results they
# reported, and tests/test_train_cli.py, hold that value.
EVAL_MAX_NEW_TOKENS = 256
EVAL_BATCH_SIZE = 8  # sources generated / scored together
FUNCTIONAL_TIMEOUT_S = 10.0  # seconds per functional test run (nvcc build + run)

# ---- optimisation
BATCH_SIZE = 1  # pairs per micro-batch and process
GRADIENT_ACCUMULATION_STEPS = 8  # micro-batches per optimizer step
NUM_EPOCHS = 3
LEARNING_RATE = 5e-6  # base learning rate: router x2, interaction layers x1, other trainable parts x0.5
WEIGHT_DECAY = 0.01  # AdamW weight decay of matrices (not biases, norms, gates)
WARMUP_STEPS = 200  # optimizer steps of linear warm-up
LR_SCHEDULER = "linear"
LR_SCHEDULERS = ("linear", "cosine")
GRADIENT_CLIP = 0.3  # max global gradient norm; 0 disables clipping
# The metrics `--best_model_metric` may name (cheap, always available, computed on every evaluation; all: higher is
# better), and the default one.
BEST_MODEL_METRICS: tuple[str, ...] = ("bleu", "chrf", "rouge_l", "exact_match", "edit_similarity")
BEST_MODEL_METRIC = "bleu"

# ---- run bookkeeping
EVAL_STEPS = 500  # validation LM loss every N optimizer steps
EVAL_MAX_SAMPLES = 100  # validation pairs generated at each epoch end
TEST_MAX_SAMPLES = 0  # test pairs generated for final_results_*.json; 0: all
SAVE_STEPS = 500  # checkpoint every N optimizer steps
SAVE_TOTAL_LIMIT = 0  # newest checkpoint-* folders kept; 0: all
LOGGING_STEPS = 10  # a metrics.jsonl line every N optimizer steps
