"""The records of the training data: a C/C++ -> CUDA `Pair`, and the `DataReport` of what a loader did with each
line it read (nothing is dropped silently: every malformed line is a `DataProblem` with its kind, file and line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Pair:
    """One C/C++ source and its CUDA translation. `origin` says where it came from (`file:line`).

    `source_raw` / `target_raw` hold the text as stored when it was rewritten on loading (BabelTower's
    space-tokenized lines); they are None when `source` / `target` are the stored text itself.
    """

    source: str
    target: str
    origin: str
    source_raw: str | None = None
    target_raw: str | None = None


@dataclass
class DataProblem:
    """One line that did not become a pair. `line` is 1-based, as editors and `sed -n` count."""

    kind: str
    file: str
    line: int
    detail: str


# Kinds of DataProblem, in the order summaries list them.
PROBLEM_KINDS = (
    "bad_utf8",
    "bad_json",
    "not_object",
    "missing_field",
    "non_string_field",
    "empty_code",
    "blank_line",
    "detokenize_failed",
)


@dataclass
class DataReport:
    """What a loader did: every line read either became a pair (`loaded`) or is one of `problems`."""

    sources: list[str] = field(default_factory=list)
    lines_read: int = 0
    loaded: int = 0
    problems: list[DataProblem] = field(default_factory=list)

    def add(self, kind: str, file: str, line: int, detail: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; expected one of {PROBLEM_KINDS}")
        self.problems.append(DataProblem(kind, file, line, detail))

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind that occurred (kinds with none are left out)."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return {kind: counts[kind] for kind in PROBLEM_KINDS if kind in counts}

    def lines(self, kind: str) -> list[int]:
        """1-based line numbers of the problems of one kind, in file order."""
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; expected one of {PROBLEM_KINDS}")
        return [problem.line for problem in self.problems if problem.kind == kind]

    def merge(self, other: DataReport) -> DataReport:
        return DataReport(
            sources=self.sources + other.sources,
            lines_read=self.lines_read + other.lines_read,
            loaded=self.loaded + other.loaded,
            problems=self.problems + other.problems,
        )

    def summary(self, max_lines: int = 5) -> str:
        """One human line per fact, e.g.
        `loaded 120 of 125 lines from a.jsonl; skipped 5` / `  bad_json: 2 (a.jsonl:3, a.jsonl:7)`."""
        head = f"loaded {self.loaded} of {self.lines_read} lines from {', '.join(self.sources) or '(nothing)'}"
        if not self.problems:
            return head + "; nothing skipped"
        parts = [f"{head}; skipped {self.skipped}"]
        for kind, count in self.counts().items():
            of_kind = [problem for problem in self.problems if problem.kind == kind]
            shown = ", ".join(f"{problem.file}:{problem.line}" for problem in of_kind[:max_lines])
            more = f", ... {count - max_lines} more" if count > max_lines else ""
            parts.append(f"  {kind}: {count} ({shown}{more}) first: {of_kind[0].detail}")
        return "\n".join(parts)


def read_lines(path: Path) -> list[bytes]:
    """The file's lines as bytes, split at b"\\n" only (str.splitlines would also split at form feeds
    and U+2028, shifting line numbers). A final newline does not start another line."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]

