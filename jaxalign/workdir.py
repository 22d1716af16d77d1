"""Run folders: whether a folder may take a run (jaxalign's marker, never a guess from files anyone can write), and
whether a run in it may be resumed (the same config, files a run writes, the same prompts and reward weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flax.traverse_util import flatten_dict

from jaxalign.config import OPEN_MAPPINGS
from jaxalign.errors import JaxalignError
from jaxalign.files import LOCK, RUN_MARKER, marker_kind


def check_workdir(workdir: str | Path, resume: bool = False, overwrite: bool = False, kind: str = "run") -> Path:
    """Fail early, before any output, when the workdir cannot be written or holds something a run
    would damage: another run (unless ``resume`` continues it or ``overwrite`` replaces it) or anything
    without jaxalign's marker of this ``kind`` ("run" or "sweep", :data:`jaxalign.files.RUN_MARKER`)."""
    path = Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise JaxalignError(f"workdir {path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise JaxalignError(f"workdir {path} is not writable ({existing} is not a writable directory)")
    if resume and overwrite:
        raise JaxalignError("--resume and --overwrite exclude each other")
    if path.is_dir() and any(child.name != LOCK for child in path.iterdir()):
        found = marker_kind(path)
        if found is None:
            raise JaxalignError(f"workdir {path} is not empty and holds no jaxalign {kind} (no {RUN_MARKER}); choose an empty or new directory")
        if found != kind:
            raise JaxalignError(f"workdir {path} holds a jaxalign {found}, not a {kind}; choose an empty or new directory")
        if not (resume or overwrite):
            raise JaxalignError(f"workdir {path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        if overwrite and (path.is_symlink() or path in (Path.cwd(), *Path.cwd().parents, Path.home())):
            raise JaxalignError(f"--overwrite will not clear {path} (a link, the current folder, one of its parents or home); name the run's own folder")
    return path


INPUTS = "inputs.json"  # what the config points to, as the run found it: a resume must find the same


def run_inputs(job) -> dict:
    """The prompts as read (a prompt file may be edited after a crash) and each local reward weight file's size and
    modification time (hashing gigabytes of weights on every start would cost more than a replaced file is likely)."""
    files = {}
    for option in job.config.reward_paths.to_dict().values():
        for value in option.values() if isinstance(option, dict) else [option]:
            path = Path(str(value)).expanduser()
            for file in sorted(path.rglob("*") if path.is_dir() else [path] if path.is_file() else []):
                if file.is_file():
                    files[str(file.absolute())] = [file.stat().st_size, file.stat().st_mtime_ns]
    return {"prompts": job.prompts, "reward_files": files}


def read_run_json(path: Path) -> dict:
    """A JSON object a run wrote (config.json, inputs.json), or one line saying the file is not one."""
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise JaxalignError(f"cannot resume: {path} is not the JSON a run writes")
    return saved


def check_same_inputs(path: Path, job) -> None:
    if not path.is_file():  # a run from before this record: nothing to compare
        return
    saved = read_run_json(path)
    current = run_inputs(job)
    if saved.get("prompts") != current["prompts"]:
        raise JaxalignError(f"cannot resume: the prompts differ from the ones this run started with ({job.config.prompt_file or 'config.prompts'} changed); use a new workdir")
    before, now = ({(name, tuple(stat)) for name, stat in files.items()} for files in (saved.get("reward_files", {}), current["reward_files"]))
    changed = sorted(before ^ now)
    if changed:
        raise JaxalignError(f"cannot resume: reward weights changed since this run started ({changed[0][0]}); use a new workdir")


def check_run_files(outs: list[Path]) -> None:
    """A resumed workdir's files must be what a run writes (a hand-made directory named metrics.jsonl would crash later)."""
    for out in outs:
        for name, is_kind, kind in (("metrics.jsonl", Path.is_file, "a file"), ("summary.json", Path.is_file, "a file"), ("images", Path.is_dir, "a directory"), ("checkpoints", Path.is_dir, "a directory")):
            if (out / name).exists() and not is_kind(out / name):
                raise JaxalignError(f"{out / name} should be {kind}; this workdir was not written by jaxalign (use a new one or --overwrite)")


def check_same_config(saved: dict, current: dict) -> None:
    """Refuse to resume a workdir with a different config, naming the fields that differ."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    differ = sorted(k for k in flat_saved.keys() | flat_current.keys() if flat_saved.get(k) != flat_current.get(k))
    if differ:
        raise JaxalignError(f"cannot resume: the config differs from the one this workdir was started with in {', '.join(differ)}")


def _flatten(tree: dict) -> dict:
    """Dotted keys to leaves; an open mapping (rewards, *_params) is one leaf, compared whole."""
    return flatten_dict(tree, is_leaf=lambda path, value: bool(path) and path[-1] in OPEN_MAPPINGS, sep=".")
