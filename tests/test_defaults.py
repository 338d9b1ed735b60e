"""One definition of each user-facing default (mot_engine/defaults.py): every surface that offers the setting reads
it — the wire protocol, the clients, the batch CLI, the daemon's cap, the language server's settings — and the
editors' settings, which cannot import Python, say the same. Also: the daemon's and the language server's light
modules import no torch."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest

from mot_engine import defaults

REPO = Path(__file__).resolve().parents[1]


def test_the_wire_and_the_clients_default_to_mot_engine_defaults():
    from daemon import protocol as P
    from daemon.client_base import ClientBase

    options = P.TranslateOptions()
    assert (options.mode, options.max_new_tokens, options.temperature, options.top_p) == (
        defaults.MODE, defaults.MAX_NEW_TOKENS, defaults.TEMPERATURE, defaults.TOP_P)
    assert typing.get_args(P.Mode) == defaults.MODES
    assert defaults.MAX_NEW_TOKENS <= defaults.MAX_NEW_TOKENS_LIMIT <= P.MAX_NEW_TOKENS_CEILING
    params = inspect.signature(ClientBase.stream_translate).parameters
    assert {name: params[name].default for name in ("mode", "max_new_tokens", "temperature", "top_p")} == {
        "mode": defaults.MODE, "max_new_tokens": defaults.MAX_NEW_TOKENS, "temperature": defaults.TEMPERATURE,
        "top_p": defaults.TOP_P}
    assert (options.candidates, options.verify) == (defaults.CANDIDATES, defaults.VERIFY)
    assert (params["candidates"].default, params["verify"].default) == (defaults.CANDIDATES, defaults.VERIFY)
    assert typing.get_args(P.VerifyChoice) == defaults.VERIFY_CHOICES and defaults.VERIFY in defaults.VERIFY_CHOICES
    assert msgspec.convert({"candidates": defaults.CANDIDATES_LIMIT}, P.TranslateOptions).candidates == \
        defaults.CANDIDATES_LIMIT
    with pytest.raises(msgspec.ValidationError):  # the wire refuses what the daemon's default limit refuses
        msgspec.convert({"candidates": defaults.CANDIDATES_LIMIT + 1}, P.TranslateOptions)


def test_the_wire_check_statuses_are_kernelchecks():
    from daemon import protocol as P
    from kernelcheck.candidates import CHECK_STATUSES, RANK
    from kernelcheck.verdict import STATUSES

    assert typing.get_args(P.CheckStatus) == CHECK_STATUSES == (*STATUSES, "skipped")
    assert set(RANK) == set(CHECK_STATUSES)


def test_the_daemon_and_its_batch_cli_default_to_mot_engine_defaults():
    from daemon.batch import BatchOptions
    from daemon.cli import build_parser
    from daemon.engine_config import EngineConfig

    assert EngineConfig().max_new_tokens == defaults.MAX_NEW_TOKENS_LIMIT
    serve = build_parser().parse_args(["serve"])
    assert serve.max_new_tokens == defaults.MAX_NEW_TOKENS_LIMIT
    translate = build_parser().parse_args(["translate", "x.cpp", "--out", "o"])
    opts = BatchOptions(paths=["x.cpp"], out_dir="o")
    for got in (translate, opts):
        assert (got.mode, got.max_new_tokens, got.temperature, got.top_p) == (
            defaults.MODE, defaults.MAX_NEW_TOKENS, defaults.TEMPERATURE, defaults.TOP_P)
    assert (translate.candidates, translate.no_verify) == (defaults.CANDIDATES, False)
    assert (opts.candidates, opts.verify) == (defaults.CANDIDATES, defaults.VERIFY)
    assert EngineConfig().verify_timeout_s == serve.verify_timeout == defaults.VERIFY_TIMEOUT_S


def test_the_language_server_settings_default_to_mot_engine_defaults():
    from lsp_server.settings import Settings

    settings = Settings()
    assert (settings.mode, settings.max_new_tokens, settings.temperature) == (
        defaults.MODE, defaults.MAX_NEW_TOKENS, defaults.TEMPERATURE)
    assert (settings.candidates, settings.verify) == (defaults.CANDIDATES, defaults.VERIFY)


def test_vscode_settings_defaults_equal_mot_engine_defaults():
    manifest = json.loads((REPO / "editors" / "vscode" / "package.json").read_text(encoding="utf-8"))
    properties = manifest["contributes"]["configuration"]["properties"]
    assert properties["mot.maxNewTokens"]["default"] == defaults.MAX_NEW_TOKENS
    assert properties["mot.mode"]["default"] == defaults.MODE
    assert tuple(properties["mot.mode"]["enum"]) == defaults.MODES
    assert properties["mot.temperature"]["default"] == defaults.TEMPERATURE
    from daemon.protocol import MAX_NEW_TOKENS_CEILING

    assert properties["mot.maxNewTokens"]["maximum"] == MAX_NEW_TOKENS_CEILING  # what the settings accept
    assert properties["mot.candidates"]["default"] == defaults.CANDIDATES
    assert properties["mot.candidates"]["maximum"] == defaults.CANDIDATES_LIMIT
    assert properties["mot.verify"]["default"] == defaults.VERIFY
    assert tuple(properties["mot.verify"]["enum"]) == defaults.VERIFY_CHOICES
    extension = (REPO / "editors" / "vscode" / "src" / "extension.ts").read_text(encoding="utf-8")
    assert '"candidates"' in extension and '"verify"' in extension  # the keys the extension sends to the server


def test_neovim_settings_defaults_equal_mot_engine_defaults():
    text = (REPO / "editors" / "nvim" / "lua" / "mot" / "init.lua").read_text(encoding="utf-8")
    block = re.search(r"^M\.defaults = \{.*?^  settings = \{(.*?)^  \},", text, re.S | re.M)
    assert block, "M.defaults.settings not found in init.lua"
    settings = block.group(1)

    def value(key: str) -> str:
        found = re.search(rf"^\s*{key} = ([^,]+),", settings, re.M)
        assert found, f"{key} not in M.defaults.settings"
        return found.group(1).strip()

    assert int(value("maxNewTokens")) == defaults.MAX_NEW_TOKENS
    assert value("mode") == repr(defaults.MODE)
    assert float(value("temperature")) == defaults.TEMPERATURE
    assert int(value("candidates")) == defaults.CANDIDATES
    assert value("verify") == repr(defaults.VERIFY)


def test_editors_readme_documents_the_default():
    readme = (REPO / "editors" / "README.md").read_text(encoding="utf-8")
    assert f"| `maxNewTokens` | `{defaults.MAX_NEW_TOKENS}` |" in readme
    assert f"| `candidates` | `{defaults.CANDIDATES}` |" in readme and f"| `verify` | `{defaults.VERIFY}` |" in readme


def test_light_modules_import_no_torch():
    """The daemon's CLI and clients, its engine module (the model loads on the engine thread), and the language
    server start without torch."""
    modules = ["daemon.cli", "daemon.client", "daemon.batch", "daemon.inprocess", "daemon.engine", "daemon.server",
               "lsp_server.cli", "lsp_server.server", "mot_engine.defaults"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert run.stdout.strip() == "[]", run.stdout + run.stderr
