"""Tokenizers: a diffusion model's CLIP and T5 tokenizers, and the one CLIP rewards use."""

from __future__ import annotations

import json
from pathlib import Path

from jaxalign.errors import JaxalignError
from jaxalign.models.hub import EMBEDDED_DIR


def load_tokenizer(directory: Path, max_length: int | None = None):
    """The CLIP tokenizer saved in ``directory``; its length capped at ``max_length`` (the text encoder's)."""
    from transformers import CLIPTokenizer

    if not directory.is_dir():
        raise JaxalignError(f"tokenizer folder not found: {directory} (a diffusers model directory holds its CLIP tokenizer there)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise JaxalignError(f"cannot read the tokenizer in {directory}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if max_length is not None and not 0 < tokenizer.model_max_length <= max_length:  # unset (transformers' huge sentinel) or beyond the encoder
        tokenizer.model_max_length = max_length
    return tokenizer


def clip_tokenizer(directory: Path):
    """A CLIP reward's tokenizer: the one beside its weights, else CLIP's BPE tokenizer shipped with the
    embedded model (every OpenAI and LAION CLIP shares it)."""
    own = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    return load_tokenizer(directory if own else EMBEDDED_DIR / "tokenizer")


def load_t5_tokenizer(directory: Path, max_length: int):
    """The T5 tokenizer saved in ``directory`` (its ``tokenizer.json``), padding and truncating to ``max_length``."""
    from transformers import T5TokenizerFast

    if not directory.is_dir():
        raise JaxalignError(f"tokenizer folder not found: {directory} (a diffusers model directory holds its T5 tokenizer there)")
    try:
        tokenizer = T5TokenizerFast.from_pretrained(directory)
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise JaxalignError(f"cannot read the tokenizer in {directory}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    tokenizer.model_max_length = max_length
    return tokenizer
