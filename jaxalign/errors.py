"""The exception types jaxalign raises for bad input and refused writes (the CLI prints either as one line), and the checks
every options mapping goes through (known keys; finite numbers in their declared ranges)."""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any


class JaxalignError(ValueError):
    """A user-facing error: bad config, missing files, unknown names."""


class OutputError(JaxalignError):
    """The operating system refused a write (no space, read-only, permissions): not bad input, so the CLI exits 1."""


# errno values that mean "the disk or the folder will not take this write", and what to do about each.
_WRITE_REFUSALS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for the file system or limit",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}  # fmt: skip


def output_error(error: BaseException, path: object) -> OutputError | None:
    """The one-line error for a refused write, or None when ``error`` is something else. orbax reports tensorstore's
    failures as ValueErrors whose text carries the errno (``[os_error_code='28']``)."""
    number = error.errno if isinstance(error, OSError) else None
    if number is None:
        found = re.search(r"os_error_code='(\d+)'", str(error))
        number = int(found[1]) if found else None
    return write_refused(path, number) if number in _WRITE_REFUSALS else None


def write_refused(path: object, number: int, detail: str = "") -> OutputError:
    return OutputError(f"cannot write {path}: {_WRITE_REFUSALS[number]}{detail}; make room (or fix the folder's permissions) and continue with --resume")


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
