"""The loaders of the training data: C/C++ -> CUDA pairs from the files they are stored in.

Two on-disk formats are read:

* JSON Lines, one object per line: `{"cpp": "...", "generated_cuda": "..."}` (field names configurable).
* BabelTower's paired `.tok` files (`cpp.<split>.tok` + `cuda.<split>.tok`): one function per line,
  space-tokenized, line i of one file pairing with line i of the other. `train.detokenize` turns a line back
  into ordinary source without changing its tokens; the original line is kept in `Pair.*_raw`.

`load_pairs` reads any supported location (a file, a folder of `.tok` pairs, a `.tok` prefix). Nothing is dropped
silently: every malformed line is recorded in the `DataReport` (train.pairs). The split and the length policy are
in train.splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from .detokenize import detokenize
from .pairs import DataReport, Pair, read_lines

# ---------------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------------


def load_jsonl(
    path: str | Path,
    *,
    source_field: str = "cpp",
    target_field: str = "generated_cuda",
    detokenize_text: bool = False,
) -> tuple[list[Pair], DataReport]:
    """Pairs from a JSON Lines file; malformed lines are reported, not fatal.

    A line becomes a pair when it is a JSON object whose two fields are strings with non-blank code.
    Otherwise it is recorded once, under the first kind that applies: bad_utf8, bad_json, not_object,
    missing_field, non_string_field, empty_code (blank lines: blank_line). `detokenize_text=True` runs
    `detokenize` on both fields (for space-tokenized data such as BabelTower's exec_dev.jsonl).
    """
    path = Path(path)
    report = DataReport(sources=[path.name])
    pairs = []
    for line_number, raw in enumerate(read_lines(path), start=1):
        report.lines_read += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            report.add("bad_utf8", path.name, line_number, str(error))
            continue
        if not text.strip():
            report.add("blank_line", path.name, line_number, "blank line")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            report.add("bad_json", path.name, line_number, f"{error.msg} at column {error.colno}")
            continue
        if not isinstance(record, dict):
            report.add("not_object", path.name, line_number, f"a JSON {type(record).__name__}, not an object")
            continue
        missing = [name for name in (source_field, target_field) if name not in record]
        if missing:
            report.add("missing_field", path.name, line_number, f"missing {missing}; has {sorted(record)}")
            continue
        wrong = [f"{name!r} is {type(record[name]).__name__}" for name in (source_field, target_field) if not isinstance(record[name], str)]
        if wrong:
            report.add("non_string_field", path.name, line_number, ", ".join(wrong) + " (expected a string)")
            continue
        blank = [name for name in (source_field, target_field) if not record[name].strip()]
        if blank:
            report.add("empty_code", path.name, line_number, f"blank {blank}")
            continue
        origin = f"{path.name}:{line_number}"
        source, target = record[source_field], record[target_field]
        if detokenize_text:
            try:
                pair = Pair(detokenize(source), detokenize(target), origin, source_raw=source, target_raw=target)
            except ValueError as error:
                report.add("detokenize_failed", path.name, line_number, str(error))
                continue
        else:
            pair = Pair(source, target, origin)
        pairs.append(pair)
        report.loaded += 1
    return pairs, report


# ---------------------------------------------------------------------------------------------------
# BabelTower .tok files
# ---------------------------------------------------------------------------------------------------


def load_babeltower(cpp_tok_path: str | Path, cuda_tok_path: str | Path) -> tuple[list[Pair], DataReport]:
    """Pairs from BabelTower's paired, space-tokenized files (line i of one pairs with line i of the other).

    Each side is detokenized into ordinary source; the stored line is kept in `source_raw`/`target_raw`.
    Different line counts mean the files are not a pair: ValueError naming both counts.
    """
    cpp_path, cuda_path = Path(cpp_tok_path), Path(cuda_tok_path)
    cpp_lines, cuda_lines = read_lines(cpp_path), read_lines(cuda_path)
    if len(cpp_lines) != len(cuda_lines):
        raise ValueError(
            f"paired files differ in length: {cpp_path} has {len(cpp_lines)} lines, {cuda_path} has {len(cuda_lines)}"
        )
    report = DataReport(sources=[f"{cpp_path.name} + {cuda_path.name}"])
    pairs = []
    for line_number, (cpp_raw, cuda_raw) in enumerate(zip(cpp_lines, cuda_lines), start=1):
        report.lines_read += 1
        texts = []
        for name, raw in ((cpp_path.name, cpp_raw), (cuda_path.name, cuda_raw)):
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                report.add("bad_utf8", name, line_number, str(error))
                break
        if len(texts) != 2:
            continue
        cpp_text, cuda_text = texts
        blank = [name for name, text in ((cpp_path.name, cpp_text), (cuda_path.name, cuda_text)) if not text.strip()]
        if blank:
            report.add("empty_code", blank[0], line_number, f"blank line in {blank}")
            continue
        try:
            source, target = detokenize(cpp_text), detokenize(cuda_text)
        except ValueError as error:
            report.add("detokenize_failed", cpp_path.name, line_number, str(error))
            continue
        pairs.append(Pair(source, target, f"{cpp_path.name}:{line_number}", source_raw=cpp_text, target_raw=cuda_text))
        report.loaded += 1
    return pairs, report


def _tok_partner(path: Path) -> tuple[Path, Path]:
    """(cpp file, cuda file) for a path naming either side of a `.tok` pair."""
    name = path.name
    if name.startswith("cpp."):
        return path, path.with_name("cuda." + name[len("cpp.") :])
    if name.startswith("cuda."):
        return path.with_name("cpp." + name[len("cuda.") :]), path
    raise ValueError(f"{path}: a .tok file must be named cpp.<split>.tok or cuda.<split>.tok to find its partner")


def _load_tok_pair(cpp_path: Path, cuda_path: Path) -> tuple[list[Pair], DataReport]:
    missing = [str(p) for p in (cpp_path, cuda_path) if not p.is_file()]
    if missing:
        raise ValueError(f"incomplete .tok pair: {cpp_path.name} needs {cuda_path.name}; missing {missing}")
    return load_babeltower(cpp_path, cuda_path)


def load_pairs(path_or_dir: str | Path, **jsonl_options) -> tuple[list[Pair], DataReport]:
    """Load pairs from any supported location:

    * `x.jsonl` -> `load_jsonl` (keyword options such as `source_field` go to it);
    * `dir/cpp.S.tok` or `dir/cuda.S.tok` -> that pair of files;
    * a directory -> every `cpp.*.tok` with its `cuda.*.tok` (sorted by name, reports merged);
    * a prefix `dir/S` (or `dir/S.tok`) -> `dir/cpp.S.tok` + `dir/cuda.S.tok`.
    """
    path = Path(path_or_dir)
    if path.is_file() and path.suffix == ".jsonl":
        return load_jsonl(path, **jsonl_options)
    if jsonl_options:
        raise ValueError(f"{path}: options {sorted(jsonl_options)} apply to .jsonl files only")
    if path.is_file():
        if path.suffix == ".tok":
            return _load_tok_pair(*_tok_partner(path))
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl or a cpp./cuda. .tok file")
    if path.is_dir():
        cpp_files = sorted(path.glob("cpp.*.tok"))
        cuda_files = sorted(path.glob("cuda.*.tok"))
        orphans = sorted({_tok_partner(p)[0].name for p in cuda_files} - {p.name for p in cpp_files})
        if orphans:
            raise ValueError(f"{path}: CUDA .tok files without their C side: missing {orphans}")
        if not cpp_files:
            raise ValueError(f"{path}: no cpp.*.tok + cuda.*.tok pairs in this directory")
        pairs: list[Pair] = []
        report = DataReport()
        for cpp_path in cpp_files:
            more_pairs, more_report = _load_tok_pair(*_tok_partner(cpp_path))
            pairs += more_pairs
            report = report.merge(more_report)
        return pairs, report
    prefix = path.name[: -len(".tok")] if path.name.endswith(".tok") else path.name
    cpp_path, cuda_path = path.with_name(f"cpp.{prefix}.tok"), path.with_name(f"cuda.{prefix}.tok")
    if cpp_path.is_file() or cuda_path.is_file():
        return _load_tok_pair(cpp_path, cuda_path)
    raise FileNotFoundError(
        f"{path}: no such file or directory, and not a prefix of {cpp_path.name} + {cuda_path.name}"
    )


def is_tok_prefix(path: str | Path) -> bool:
    """Does `path` name a `.tok` pair by its prefix (`dir/S` or `dir/S.tok` for `dir/cpp.S.tok` + `dir/cuda.S.tok`)?"""
    p = Path(path)
    prefix = p.name[: -len(".tok")] if p.name.endswith(".tok") else p.name
    return (p.parent / f"cpp.{prefix}.tok").exists() or (p.parent / f"cuda.{prefix}.tok").exists()
