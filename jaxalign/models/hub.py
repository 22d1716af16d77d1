"""Where model files are: the embedded model shipped in the package, a local directory, or a Hub repo id
already in the local Hugging Face cache (read offline with ``huggingface_hub``; nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub

from jaxalign.errors import JaxalignError

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent.parent / "embedded"
EMBEDDED_CLIP_DIR = Path(__file__).parent.parent / "embedded_clip"  # the tiny CLIP of the embedded world (jaxalign.tiny_clip)
EMBEDDED_SD3 = "embedded_sd3"
EMBEDDED_SD3_DIR = Path(__file__).parent.parent / "embedded_sd3"  # the tiny SD3-layout flow model (scripts/train_tiny_sd3.py)
# The models shipped in the package, by the name a config gives.
EMBEDDED_MODELS = {EMBEDDED: EMBEDDED_DIR, EMBEDDED_SD3: EMBEDDED_SD3_DIR}


def resolve_model_dir(source: str) -> Path:
    """A local diffusers directory for ``source``: a path, or a Hub repo id already in the HF cache.

    The cache is read offline (``local_files_only``), so ``HF_HUB_OFFLINE`` is always respected;
    its location follows ``HF_HUB_CACHE`` / ``HF_HOME`` as the Hub library does.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") != 1 or path.is_absolute() or source.startswith("."):
        raise JaxalignError(f"model directory not found: {path} (expected a diffusers-format directory, a cached Hub repo id, or 'embedded')")
    cache = hf_cache_dir()
    try:
        return Path(huggingface_hub.snapshot_download(source, cache_dir=cache, local_files_only=True))
    except (huggingface_hub.errors.LocalEntryNotFoundError, huggingface_hub.errors.HFValidationError):
        looked = cache / ("models--" + source.replace("/", "--"))
        raise JaxalignError(
            f"model {source!r} is not in the local Hugging Face cache (looked in {looked}); "
            "download it where there is network access, or give a local diffusers directory"
        ) from None


def resolve_component(source: str, what: str) -> Path:
    """A reward model's directory (``what`` names it in the error): a local path, or a Hub repo id in the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        return resolve_model_dir(source)
    except JaxalignError:
        raise JaxalignError(f"{what} not found: {path} (expected a local directory or a Hub repo id in the local cache)") from None


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache directory, read from the environment at call time (huggingface_hub reads
    it once, at import, so a process that sets ``HF_HUB_CACHE`` later would otherwise not be heard)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"
