"""The one exception type jaxalign raises for bad input (the CLI prints it as one line), and the checks
every options mapping goes through (known keys; finite numbers in their declared ranges)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


class JaxalignError(ValueError):
    """A user-facing error: bad config, missing files, unknown names."""


def check_known(what: str, given: Iterable[str], valid: Iterable[str], where: str = "") -> None:
    """Raise one line naming the keys of ``given`` not in ``valid``: ``unknown {what} a, b{where}; valid: ...``."""
    valid = set(valid)
    unknown = sorted(set(given) - valid)
    if unknown:
        raise JaxalignError(f"unknown {what} {', '.join(unknown)}{where}; valid: {', '.join(sorted(valid)) or '(none)'}")


def check_numbers(what: str, given: Mapping[str, Any], ranges: Mapping[str, tuple[float, float]], where: str = "") -> None:
    """Raise one line for a value of ``given`` that is not a finite number, or is outside its declared closed range
    in ``ranges`` (keys without one need only be finite): a NaN or infinite knob would make every candidate
    non-finite, a negative bound means nothing, and either would otherwise run to a useless result."""
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JaxalignError(f"{what}.{key}{where} must be a finite number, got {value!r}")
        low, high = ranges.get(key, (-math.inf, math.inf))
        if not low <= value <= high:
            raise JaxalignError(f"{what}.{key}{where} must be in [{low:g}, {high:g}], got {value!r}")
