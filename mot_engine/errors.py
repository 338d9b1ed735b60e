"""Typed exceptions of the engine. User mistakes are `ValueError` subclasses carrying the offending values."""

from __future__ import annotations


class MoTError(Exception):
    """Base class of the engine's own errors."""


class PresetUnavailable(MoTError, RuntimeError):
    """A preset's weights or packages are missing; the message says exactly how to get them."""


class CheckpointMismatch(MoTError, ValueError):
    """A checkpoint was made for other experts / another configuration; the message names the mismatch."""


class SourceTooLong(MoTError, ValueError):
    """A source does not fit an expert's context; never truncated silently."""

    def __init__(self, message: str, *, limit: int, actual: int, expert: str):
        super().__init__(message)
        self.limit = limit
        self.actual = actual
        self.expert = expert


class NonFiniteError(MoTError, FloatingPointError):
    """NaN or Inf appeared in a forward pass; raised, never replaced by zeros."""


class QuantizationUnavailable(MoTError, RuntimeError):
    """4-bit / 8-bit experts were asked for where bitsandbytes or a CUDA device is missing."""


class InvalidEnvironment(MoTError, ValueError):
    """An environment variable holds a value the project cannot read; the message names it and its value."""
