"""kernelcheck stands alone: torch-free, and it imports none of the project's other packages."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import kernelcheck

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(kernelcheck.__file__).resolve().parent
FORBIDDEN = ("torch", "transformers", "mot_engine", "daemon", "lsp_server", "train")
# The harness modules run where only the standard library is (benchmarks/functional_gpu.py on a GPU machine).
STDLIB_ONLY = ("kernelcheck.cases", "kernelcheck.cli", "kernelcheck.functional", "kernelcheck.generated",
               "kernelcheck.programs", "kernelcheck.reports", "kernelcheck.sandbox", "kernelcheck.side_by_side",
               "kernelcheck.toolchain")

_PROBE = """
import importlib, json, pkgutil, sys
steps = {}
def loaded():
    return sorted({name.split(".")[0] for name in sys.modules})
steps["startup"] = loaded()  # what the interpreter's site set-up loaded before anything of ours
import kernelcheck
steps["kernelcheck"] = loaded()
for name in %r:
    importlib.import_module(name)
steps["harness"] = loaded()
for info in pkgutil.iter_modules(kernelcheck.__path__):
    importlib.import_module("kernelcheck." + info.name)
steps["all"] = loaded()
steps["modules"] = sorted(name for name in sys.modules if name.startswith("kernelcheck."))
print(json.dumps(steps))
"""


def _submodules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def test_importing_kernelcheck_and_every_submodule_loads_no_torch_and_no_project_package():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _PROBE % (STDLIB_ONLY,)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)
    assert steps["modules"] == sorted(f"kernelcheck.{name}" for name in _submodules())  # every submodule imported
    for step in ("kernelcheck", "harness", "all"):
        assert not set(FORBIDDEN) & set(steps[step]), (step, sorted(set(FORBIDDEN) & set(steps[step])))
    # The package itself stays light, and tree-sitter comes only with kernelcheck.parsing.
    assert "tree_sitter" not in steps["kernelcheck"] and "tree_sitter" not in steps["harness"]
    added = set(steps["harness"]) - set(steps["startup"]) - {"kernelcheck"}
    assert added <= set(sys.stdlib_module_names), sorted(added - set(sys.stdlib_module_names))


def test_kernelcheck_source_imports_no_project_package_even_lazily():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name}:{node.lineno} imports {name}"


def test_python_m_kernelcheck_dispatches_the_functional_command():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    top = subprocess.run([sys.executable, "-m", "kernelcheck", "--help"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=60)
    assert top.returncode == 0 and "functional" in top.stdout
    bad = subprocess.run([sys.executable, "-m", "kernelcheck", "bogus"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "unknown command 'bogus'" in bad.stderr
