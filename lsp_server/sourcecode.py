"""`mot_engine.sourcecode` without importing the `mot_engine` package (which imports torch at once).

The language server needs only the tree-sitter / nvcc helpers of `mot_engine/sourcecode.py`, a module with no
imports from its package. Importing it the normal way runs `mot_engine/__init__.py`, which imports torch and the
model: ~5 s and hundreds of MB before the editor gets an answer, for code the server never runs. So the file is
loaded on its own, under a private name. When `mot_engine.sourcecode` is already imported (tests, the daemon in
the same process), that module is used instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    loaded = sys.modules.get("mot_engine.sourcecode")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("mot_engine")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mot_engine package is not installed (pip install -e .)")
    path = Path(next(iter(spec.submodule_search_locations))) / "sourcecode.py"
    name = "lsp_server._mot_engine_sourcecode"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    module_spec.loader.exec_module(module)
    return module


_module = _load()

FunctionSpan = _module.FunctionSpan
SyntaxProblem = _module.SyntaxProblem
find_functions = _module.find_functions
function_at = _module.function_at
functions_in_range = _module.functions_in_range
check_cuda_syntax = _module.check_cuda_syntax
find_nvcc = _module.find_nvcc
nvcc_compile_check = _module.nvcc_compile_check

__all__ = [
    "FunctionSpan", "SyntaxProblem", "check_cuda_syntax", "find_functions", "find_nvcc", "function_at",
    "functions_in_range", "nvcc_compile_check",
]
