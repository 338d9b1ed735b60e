"""The runtime configuration: every switch declared once, read from the environment in one place, documented in
README exactly as declared."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mot_engine.envs import RuntimeConfig, switch_table
from mot_engine.errors import InvalidEnvironment

REPO = Path(__file__).resolve().parents[1]


def test_from_env_reads_each_switch_and_defaults_the_rest():
    runtime = RuntimeConfig.from_env({"MOT_FUSED_NORMS": "0", "MOT_SLABS": "true", "MOT_PDL": " off "})
    assert runtime.fused_norms is False and runtime.slabs is True and runtime.pdl is False
    assert runtime.triton_gemv is True and runtime.compile_layers is False  # unset: the defaults
    assert RuntimeConfig.from_env({}) == RuntimeConfig()
    assert runtime.changed() == {"MOT_FUSED_NORMS": False, "MOT_SLABS": True, "MOT_PDL": False}
    assert "MOT_FUSED_NORMS=0*" in runtime.describe() and "MOT_TRITON_GEMV=1 " in runtime.describe()


def test_a_value_that_is_not_a_switch_names_the_variable():
    with pytest.raises(InvalidEnvironment, match=r"MOT_CUDA_GRAPHS='maybe'"):
        RuntimeConfig.from_env({"MOT_CUDA_GRAPHS": "maybe"})


def test_every_switch_has_its_own_variable_and_meaning():
    fields = dataclasses.fields(RuntimeConfig)
    variables = [f.metadata["env"] for f in fields]
    assert len(set(variables)) == len(variables) and all(v.startswith("MOT_") for v in variables)
    assert all(f.metadata["meaning"] and isinstance(f.default, bool) for f in fields)


def test_readme_holds_the_switch_table_as_declared():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- switches:.*?-->\n(.*?)\n<!-- /switches -->", readme, re.S)
    assert block is not None, "README.md lost its switches block"
    assert block.group(1).strip() == switch_table().strip()


def test_the_engine_reads_no_environment_variable_outside_envs():
    """`os.environ` / `os.getenv` appear in mot_engine only in envs.py (the one place that reads them)."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "mot_engine").rglob("*.py")
                 if p.name != "envs.py" and re.search(r"os\.environ|os\.getenv", p.read_text())]
    assert offenders == []


def test_envs_and_defaults_import_no_torch():
    code = "import sys, mot_engine.envs, mot_engine.defaults, mot_engine.presets.names; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
