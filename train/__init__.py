"""Training and evaluation of the MoT C/C++ -> CUDA translator: `mot-train` (router and interaction layers over
frozen experts, exact resume) and `mot-eval` (translation metrics, routing statistics, functional correctness).

Modules: cli.py / cli_checks.py (the command lines), defaults.py (their defaults), data.py / pairs.py /
detokenize.py / splits.py (the data), building.py (the model), trainer.py with optim.py, checkpointing.py,
training_log.py and training_eval.py (the run), evaluate.py / metrics.py / run_eval.py (evaluation), outputs.py; synth/ (synthetic training pairs from our own
templates, `python -m train.synth`).
"""
