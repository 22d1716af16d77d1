"""Writing output files so that a crash at any instant, or another process writing the same file (sweep
shards on other hosts), leaves the previous version or the new one, never half of one."""

from __future__ import annotations

import contextlib
import csv
import fcntl
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
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            error.filename = str(path)  # the file meant, not its temporary name (or none, for a failed write)
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


# The file that makes a folder a jaxalign workdir, written before anything else: --overwrite, --resume and eval act
# only on folders that hold it (a config.json could be anyone's). MARKER_FORMAT changes if its meaning does.
RUN_MARKER, MARKER_FORMAT = ".jaxalign-workdir.json", 1


def write_marker(workdir: Path, kind: str) -> None:
    """Mark ``workdir`` as a jaxalign ``kind`` ("run" or "sweep")."""
    write_json(workdir / RUN_MARKER, {"jaxalign": kind, "format": MARKER_FORMAT})


def marker_kind(workdir: Path) -> str | None:
    """The kind ``workdir``'s marker names, or None without one; a marker that is not jaxalign's JSON is an error."""
    from jaxalign.errors import JaxalignError

    path = workdir / RUN_MARKER
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("jaxalign") in ("run", "sweep") and data.get("format") == MARKER_FORMAT):
        raise JaxalignError(f"{path} is damaged or from another jaxalign version; this folder is left alone (use a new workdir)")
    return data["jaxalign"]


# Held (flock) by the process working in a run folder; the OS releases it when that process ends, however it ends.
LOCK = ".jaxalign-lock"


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Hold ``workdir``'s lock while the block runs (creating the folder); a second process is refused in one line."""
    from jaxalign.errors import JaxalignError

    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise JaxalignError(f"workdir {workdir} is in use by another jaxalign process; let it finish (or stop it) first") from None
    try:
        yield
    finally:
        handle.close()


def clear_folder(workdir: Path) -> None:
    """Remove everything in ``workdir`` but its lock (which this process holds)."""
    import shutil

    for child in workdir.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
