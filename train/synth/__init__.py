"""Synthetic training pairs: C/C++ functions and the CUDA kernels they become, generated from templates written
by the team ("families" with randomized details), deterministic from a seed, and checked by gates before use.

Modules: spec.py (what a family produces), names.py and style.py (the vocabularies and the C's surface style),
kit.py (the toolkit families draw with), fam_*.py (the families), families.py (their registry), render.py (a spec
as C and as its kernel), generate.py (`generate(n, seed)`), textnorm.py (tokens and shapes for deduplication),
decontaminate.py (apart from the evaluation set), compile_gate.py (g++ and nvcc in batches), verify_gate.py (the
differential check, when `kernelcheck.verify` exists), pipeline.py (the gates in order), cli.py
(`python -m train.synth`).

No pair is taken from an evaluation set: the families are our own, and `decontaminate` rejects any pair whose
names or bodies meet the evaluation functions'.
"""
