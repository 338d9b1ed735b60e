"""The server's settings (section `mot`): parsed from initializationOptions and workspace/didChangeConfiguration.

One frozen dataclass; `parse_settings(raw, base)` returns a new one plus the problems found (wrong types, unknown
values, unknown keys), so a typo in an editor's settings is reported to the user instead of being ignored. A bad
value keeps the previous (or default) value of that key only; the other keys still apply.

Accepted shapes: `{"mot": {...}}` (what VS Code and Neovim send) or the inner table itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from daemon.protocol import MAX_NEW_TOKENS_CEILING, Mode, VerifyChoice
from mot_engine.defaults import (
    CANDIDATES,
    CANDIDATES_LIMIT,
    MAX_NEW_TOKENS,
    MODE,
    MODES,
    TEMPERATURE,
    VERIFY,
    VERIFY_CHOICES,
)

SECTION = "mot"

Placement = Literal["newFile", "belowFunction", "replaceSelection"]
PLACEMENTS: tuple[str, ...] = ("newFile", "belowFunction", "replaceSelection")
CHECKS: tuple[str, ...] = ("auto", "syntax", "off")

# The largest mot.maxNewTokens accepted: what the wire format carries. Not mot_engine.defaults.MAX_NEW_TOKENS_LIMIT
# (4096): that is a daemon's default cap, which each daemon may change (`serve --max-new-tokens`); a request above
# its daemon's cap is answered `too_large` with that cap, so the settings do not guess it.
MAX_NEW_TOKENS_ACCEPTED = MAX_NEW_TOKENS_CEILING


@dataclass(frozen=True)
class Settings:
    """Every key of the `mot` section. Names are the Python spelling of the editor keys (see `KEYS`)."""

    endpoint: str | None = None  # None: the daemon's default (ipc socket in the user runtime dir)
    autostart: bool = True  # start a daemon when none answers
    preset: str | None = None  # for an autostarted daemon; None: the daemon's default
    checkpoint: str | None = None  # for an autostarted daemon
    mode: Mode = MODE  # mot_engine.defaults, as every default of a translation
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = TEMPERATURE
    placement: Placement = "newFile"
    candidates: int = CANDIDATES  # greedy, each other expert's greedy, then sampled; the first verified wins
    verify: VerifyChoice = VERIFY  # auto: the daemon verifies each kernel where it has a C++ compiler; off: never
    # Advanced keys (documented, not required by most users):
    check: Literal["auto", "syntax", "off"] = "auto"  # auto: nvcc when found, else tree-sitter-cuda syntax
    ignore_eos: bool = False  # generate exactly maxNewTokens (benchmarks and tests)
    request_timeout: float | None = None  # seconds a translation may take; None: the daemon's default

    def translate_options(self) -> dict[str, Any]:
        """Keyword arguments for `DaemonClient.stream_translate`."""
        options: dict[str, Any] = {
            "mode": self.mode,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "ignore_eos": self.ignore_eos,
            "candidates": self.candidates,
            "verify": self.verify,
        }
        if self.request_timeout is not None:
            options["timeout_s"] = self.request_timeout
        return options

    def to_editor_dict(self) -> dict[str, Any]:
        """The settings under their editor names (for status messages and tests)."""
        return {editor: getattr(self, python) for editor, python in KEYS.items()}


# editor key -> dataclass field
KEYS: dict[str, str] = {
    "endpoint": "endpoint",
    "autostart": "autostart",
    "preset": "preset",
    "checkpoint": "checkpoint",
    "mode": "mode",
    "maxNewTokens": "max_new_tokens",
    "temperature": "temperature",
    "placement": "placement",
    "candidates": "candidates",
    "verify": "verify",
    "check": "check",
    "ignoreEos": "ignore_eos",
    "requestTimeout": "request_timeout",
}

# Keys of the `mot` section that belong to editor clients (how to start the server, LSP tracing): not ours to check.
CLIENT_KEYS = frozenset({"server", "trace"})

# Keys that change how an autostarted daemon is started (a running one keeps its own until restarted).
DAEMON_KEYS = frozenset({"endpoint", "preset", "checkpoint"})


def _optional_str(key: str, value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        value = value.strip()
        return (value or None), None
    return None, f"mot.{key} must be a string or null, got {value!r}"


def _bool(key: str, value: Any) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    return None, f"mot.{key} must be true or false, got {value!r}"


def _choice(choices: tuple[str, ...]):
    def check(key: str, value: Any) -> tuple[str | None, str | None]:
        if value in choices:
            return value, None
        return None, f"mot.{key} must be one of {', '.join(choices)}; got {value!r}"

    return check


def _whole_number(low: int, high: int, low_means: str = ""):
    """A parser of a whole number in [low, high] (`low_means`: what the lowest value does, for the message)."""

    def check(key: str, value: Any) -> tuple[int | None, str | None]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return None, f"mot.{key} must be a whole number, got {value!r}"
        value = int(value)
        if not low <= value <= high:
            return None, f"mot.{key} must be between {low}{low_means} and {high}, got {value}"
        return value, None

    return check


def _temperature(key: str, value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"mot.{key} must be a number, got {value!r}"
    if not 0.0 <= value <= 100.0:
        return None, f"mot.{key} must be between 0 (greedy) and 100, got {value}"
    return float(value), None


def _timeout(key: str, value: Any) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None, f"mot.{key} must be a positive number of seconds or null, got {value!r}"
    return float(value), None


_PARSERS = {
    "endpoint": _optional_str,
    "autostart": _bool,
    "preset": _optional_str,
    "checkpoint": _optional_str,
    "mode": _choice(MODES),
    "maxNewTokens": _whole_number(1, MAX_NEW_TOKENS_ACCEPTED),
    "temperature": _temperature,
    "placement": _choice(PLACEMENTS),
    "candidates": _whole_number(1, CANDIDATES_LIMIT, " (greedy only)"),
    "verify": _choice(VERIFY_CHOICES),
    "check": _choice(CHECKS),
    "ignoreEos": _bool,
    "requestTimeout": _timeout,
}
_NULLABLE = {"endpoint", "preset", "checkpoint", "requestTimeout"}


def section_of(raw: Any) -> dict[str, Any] | None:
    """The `mot` table of what an editor sent: `{"mot": {...}}` or the table itself. None when there is none."""
    if not isinstance(raw, dict):
        return None
    inner = raw.get(SECTION)
    if isinstance(inner, dict):
        return inner
    if any(key in KEYS for key in raw):
        return raw
    return None


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Apply the keys present in `raw` on top of `base` (default: the defaults). Returns (settings, problems).

    A key with a bad value keeps its value from `base` and adds a problem; an unknown key adds a problem.
    `null` for a non-nullable key means "the default".
    """
    base = base or Settings()
    table = section_of(raw)
    if table is None:
        problems = [] if raw in (None, {}) else [f"ignoring settings that hold no `{SECTION}` section: {raw!r}"[:300]]
        return base, problems
    changes: dict[str, Any] = {}
    problems: list[str] = []
    defaults = Settings()
    for key, value in table.items():
        field = KEYS.get(key)
        if field is None and key in CLIENT_KEYS:
            continue
        if field is None:
            problems.append(f"unknown setting mot.{key} (known: {', '.join(KEYS)})")
            continue
        if value is None and key not in _NULLABLE:
            changes[field] = getattr(defaults, field)
            continue
        parsed, problem = _PARSERS[key](key, value)
        if problem is not None:
            problems.append(problem)
            continue
        changes[field] = parsed
    return dataclasses.replace(base, **changes), problems


def changed_keys(old: Settings, new: Settings) -> set[str]:
    """Editor names of the keys whose values differ."""
    return {editor for editor, field in KEYS.items() if getattr(old, field) != getattr(new, field)}
