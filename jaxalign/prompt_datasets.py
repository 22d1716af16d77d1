"""Prompts from a Hugging Face dataset in the local datasets cache: ``prompt_file="hf:NAME[:SPLIT][#COLUMN]"``.

As with models, nothing is downloaded: ``datasets.load_dataset`` runs offline, so it reads the Arrow files an
earlier ``load_dataset(NAME)`` left in the datasets cache (``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``,
read at call time). The split defaults to ``train`` and the column to ``prompt``, as a .csv prompt file's.
``datasets`` is an optional dependency (``pip install 'jaxalign[datasets]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from jaxalign.errors import JaxalignError

PREFIX = "hf:"
DEFAULT_SPLIT = "train"
DEFAULT_COLUMN = "prompt"
SYNTAX = "hf:NAME[:SPLIT][#COLUMN] (e.g. hf:sayakpaul/drawbench#Prompts)"
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # a Hub dataset id: owner/name, or a bare name
_SPLIT = re.compile(r"\w[\w.-]*")


def is_dataset_source(prompt_file: str) -> bool:
    return prompt_file.startswith(PREFIX)


def parse_source(source: str) -> tuple[str, str, str]:
    """``hf:NAME[:SPLIT][#COLUMN]`` as (name, split, column), with the defaults filled in."""
    rest, hash_sign, column = source.removeprefix(PREFIX).partition("#")
    name, colon, split = rest.partition(":")
    if not _NAME.fullmatch(name) or (colon and not _SPLIT.fullmatch(split)) or (hash_sign and not column):
        raise JaxalignError(f"prompt_file {source!r} is not {SYNTAX}")
    return name, split or DEFAULT_SPLIT, column or DEFAULT_COLUMN


def datasets_cache_dir() -> Path:
    """The datasets cache as the datasets library locates it, but read from the environment now rather than
    when datasets was imported."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def read_dataset_prompts(source: str) -> list[str]:
    """The prompts in one column of one split of a cached dataset; bad input raises a one-line JaxalignError."""
    name, split, column = parse_source(source)
    try:
        import datasets
    except ImportError:
        raise JaxalignError(f"prompt_file {source!r} needs the datasets library: pip install 'jaxalign[datasets]'") from None
    cache = datasets_cache_dir()
    try:
        with _offline(datasets):
            splits = datasets.load_dataset(name, cache_dir=str(cache))
    except (ConnectionError, FileNotFoundError):  # what load_dataset raises offline for a dataset it has not cached
        raise JaxalignError(
            f"dataset {name!r} is not in the local datasets cache (looked in {cache / _cache_folder(name)}); "
            f"run datasets.load_dataset({name!r}) where the Hub is reachable, and copy the cache over if needed"
        ) from None
    except Exception as error:  # noqa: BLE001 - e.g. several cached configurations; datasets' messages span lines
        lines = str(error).strip().splitlines()
        raise JaxalignError(f"cannot read dataset {name!r} from {cache}: {type(error).__name__}: {lines[0] if lines else ''}") from None
    if split not in splits:
        raise JaxalignError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(sorted(splits))}")
    table = splits[split]
    if column not in table.column_names:
        raise JaxalignError(
            f"dataset {name!r} split {split!r} has no column {column!r}; columns: {', '.join(table.column_names)} "
            f"(choose one with hf:{name}:{split}#COLUMN)"
        )
    values = [value for value in table[column] if value is not None]
    wrong = next((value for value in values if not isinstance(value, str)), None)
    if wrong is not None:
        raise JaxalignError(f"column {column!r} of dataset {name!r} holds {type(wrong).__name__} values, not text")
    return values


@contextlib.contextmanager
def _offline(datasets):
    """Offline mode and quiet logs for one load. datasets reads HF_DATASETS_OFFLINE into its config module once,
    at import, so the flag is set there (HF_HUB_OFFLINE from 3.0 on, HF_DATASETS_OFFLINE before) and given back
    afterwards; its 'using the latest cached version' warnings would otherwise reach every run's stderr."""
    from datasets.utils import logging

    saved = {flag: getattr(datasets.config, flag) for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, flag)}
    verbosity = logging.get_verbosity()
    try:
        for flag in saved:
            setattr(datasets.config, flag, True)
        logging.set_verbosity_error()
        yield
    finally:
        for flag, value in saved.items():
            setattr(datasets.config, flag, value)
        logging.set_verbosity(verbosity)


def _cache_folder(name: str) -> str:
    """The folder datasets keeps a Hub dataset in, inside its cache: ``owner___name``."""
    from datasets.naming import camelcase_to_snakecase

    *owner, base = name.split("/")
    return "___".join([*owner, camelcase_to_snakecase(base)])
