"""Writing output files so that a crash at any instant, or another process writing the same file (sweep
shards on other hosts), leaves the previous version or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from pathlib import Path


def replace_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to a temporary file of a unique name beside ``path`` (the umask's permissions,
    unlike mkstemp's owner-only ones), fsync it and rename it over ``path``."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("xb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    replace_atomically(path, (json.dumps(data, indent=2) + "\n").encode())


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows with the first row's keys as the header (an empty file for no rows)."""
    text = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    replace_atomically(path, text.getvalue().encode())
