"""Prompts from a Hugging Face dataset in the local datasets cache (prompt_file="hf:NAME[:SPLIT][#COLUMN]"), offline."""

import shutil
import sys
from pathlib import Path

import datasets
import pytest

from jaxalign.cli import main
from jaxalign.config import default_config, read_prompts
from jaxalign.errors import JaxalignError

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"prompt": ["a red circle", "  a blue square  ", "", "a green dot"], "caption": ["c0", "c1", "c2", "c3"], "id": [0, 1, 2, 3]}
TEST = {"prompt": ["a yellow star", "a black line"], "caption": ["t0", "t1"], "id": [4, 5]}


def cache_dataset(cache: Path, repo_id: str, splits: dict, scratch: Path) -> None:
    """Leave in ``cache`` what ``datasets.load_dataset(repo_id)`` leaves there after a download, without the Hub.

    The splits are written as a Hub dataset repo lays them out (``data/<split>-00000-of-00001.parquet``) in a
    local folder called like the dataset; loading that folder prepares the Arrow files in ``<cache>/<name>/``,
    named after the dataset as a download's are, and datasets keeps Hub dataset ``owner/name`` in
    ``<cache>/owner___name``, so one rename gives the download's layout."""
    owner, name = repo_id.split("/")
    folder = scratch / name
    (folder / "data").mkdir(parents=True)
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    datasets.load_dataset(str(folder), cache_dir=str(cache))
    (cache / name).rename(cache / f"{owner}___{name}")
    shutil.rmtree(folder)  # from here on the cache alone holds the data


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """An HF_HOME whose datasets cache holds owner/prompts (train and test splits)."""
    home = tmp_path_factory.mktemp("hf_home")
    cache_dataset(home / "datasets", "owner/prompts", {"train": TRAIN, "test": TEST}, tmp_path_factory.mktemp("scratch"))
    return home


@pytest.fixture
def cache(hf_home, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_home / "datasets"))
    return hf_home / "datasets"


def prompts_of(prompt_file: str) -> list[str]:
    config = default_config()
    config.prompt_file = prompt_file
    return read_prompts(config)


def test_column_and_split_selection(cache):
    # Defaults: split "train", column "prompt"; prompts are stripped and empty ones dropped, as from a file.
    assert prompts_of("hf:owner/prompts") == ["a red circle", "a blue square", "a green dot"]
    assert prompts_of("hf:owner/prompts:train") == ["a red circle", "a blue square", "a green dot"]
    assert prompts_of("hf:owner/prompts:test") == ["a yellow star", "a black line"]
    assert prompts_of("hf:owner/prompts#caption") == ["c0", "c1", "c2", "c3"]
    assert prompts_of("hf:owner/prompts:test#caption") == ["t0", "t1"]


def test_loads_offline_and_gives_the_flags_back(cache, monkeypatch):
    from datasets.utils import logging

    seen = []
    load = datasets.load_dataset

    def recording_load(*args, **kwargs):
        seen.append((datasets.config.HF_HUB_OFFLINE, args, kwargs))
        return load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording_load)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    previous = logging.get_verbosity()
    logging.set_verbosity_warning()
    try:
        assert prompts_of("hf:owner/prompts:test") == ["a yellow star", "a black line"]
        assert logging.get_verbosity() == logging.WARNING
    finally:
        logging.set_verbosity(previous)
    assert seen == [(True, ("owner/prompts",), {"cache_dir": str(cache)})]
    assert datasets.config.HF_HUB_OFFLINE is False


def test_hf_home_locates_the_cache_when_hf_datasets_cache_is_unset(hf_home, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert prompts_of("hf:owner/prompts:test") == ["a yellow star", "a black line"]
    monkeypatch.setenv("HF_HOME", str(hf_home / "elsewhere"))
    with pytest.raises(JaxalignError, match="looked in " + str(hf_home / "elsewhere" / "datasets" / "owner___prompts")):
        prompts_of("hf:owner/prompts")


def test_dataset_not_in_the_cache(cache):
    with pytest.raises(JaxalignError) as error:
        prompts_of("hf:owner/missing")
    assert str(error.value).startswith(f"dataset 'owner/missing' is not in the local datasets cache (looked in {cache / 'owner___missing'}); ")


def test_unknown_column_lists_the_columns(cache):
    with pytest.raises(JaxalignError) as error:
        prompts_of("hf:owner/prompts:test#Prompts")
    assert str(error.value) == (
        "dataset 'owner/prompts' split 'test' has no column 'Prompts'; columns: prompt, caption, id "
        "(choose one with hf:owner/prompts:test#COLUMN)"
    )


def test_unknown_split_lists_the_splits(cache):
    with pytest.raises(JaxalignError) as error:
        prompts_of("hf:owner/prompts:validation")
    assert str(error.value) == "dataset 'owner/prompts' has no split 'validation'; splits: test, train"


def test_a_column_that_is_not_text(cache):
    with pytest.raises(JaxalignError) as error:
        prompts_of("hf:owner/prompts#id")
    assert str(error.value) == "column 'id' of dataset 'owner/prompts' holds int values, not text"


@pytest.mark.parametrize("source", ["hf:", "hf:owner/prompts:", "hf:owner/prompts#", "hf:a/b/c", "hf:owner/prompts:te st"])
def test_malformed_sources(source, cache):
    with pytest.raises(JaxalignError) as error:
        prompts_of(source)
    assert str(error.value) == f"prompt_file {source!r} is not hf:NAME[:SPLIT][#COLUMN] (e.g. hf:sayakpaul/drawbench#Prompts)"


def test_without_the_datasets_library(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(JaxalignError) as error:
        prompts_of("hf:owner/prompts")
    assert str(error.value) == "prompt_file 'hf:owner/prompts' needs the datasets library: pip install 'jaxalign[datasets]'"


@pytest.mark.parametrize(
    "source, message",
    [
        ("hf:owner/missing", "is not in the local datasets cache"),
        ("hf:owner/prompts#Prompts", "has no column 'Prompts'; columns: prompt, caption, id"),
        ("hf:owner/prompts:dev", "has no split 'dev'; splits: test, train"),
    ],
)
def test_command_line_reports_one_line_and_writes_nothing(source, message, cache, tmp_path, capsys):
    workdir = tmp_path / "out"
    code = main(["run", "--config", str(ROOT / "configs" / "red_pixels.py"), f"--config.prompt_file={source}", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxalign: error: dataset 'owner/") and message in lines[0], err
    assert not workdir.exists()
