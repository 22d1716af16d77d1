"""The one exception type jaxalign raises for bad input (the CLI prints it as one line), and the check
every options mapping goes through."""

from __future__ import annotations

from collections.abc import Iterable


class JaxalignError(ValueError):
    """A user-facing error: bad config, missing files, unknown names."""


def check_known(what: str, given: Iterable[str], valid: Iterable[str], where: str = "") -> None:
    """Raise one line naming the keys of ``given`` not in ``valid``: ``unknown {what} a, b{where}; valid: ...``."""
    valid = set(valid)
    unknown = sorted(set(given) - valid)
    if unknown:
        raise JaxalignError(f"unknown {what} {', '.join(unknown)}{where}; valid: {', '.join(sorted(valid)) or '(none)'}")
