"""What a model family is: the plug-in interface that :class:`~jaxalign.models.diffusion.DiffusionModel`,
loading, saving and the tests call, so that nothing else asks which family a model belongs to.

A family knows its diffusers pipelines and component folders, builds its Flax text encoders, tokenizes,
encodes prompts into its conditioning pytree, turns that pytree into the UNet's inputs, writes its
``model_index.json`` entries, and (for tests) builds a tiny random PyTorch pipeline of its layout and reads
that pipeline's own prompt encoding back for parity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class ModelFamily:
    """One family of diffusers pipelines that share a text-conditioning scheme (subclass per family)."""

    name: str
    pipelines: tuple[str, ...]  # model_index.json "_class_name" values; the first is the one saved
    text_folders: tuple[tuple[str, str], ...]  # (text encoder folder, its tokenizer folder), in encoding order

    @property
    def components(self) -> tuple[str, ...]:
        """Subdirectories with weights; their names are also the params pytree's top-level keys."""
        return ("unet", "vae", *(encoder for encoder, _ in self.text_folders))

    @property
    def directories(self) -> tuple[str, ...]:
        return (*self.components, "scheduler")

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"

    # Loading and saving.

    def text_encoders(self, path: Path, dtype) -> dict[str, Any]:
        """Flax text encoder modules (built without weights), keyed by folder, from ``path``'s configs."""
        raise NotImplementedError

    def options(self, index: dict) -> dict:
        """Family settings read from ``model_index.json`` (empty when there is none); saved back by :meth:`index`."""
        return {}

    def index(self, model) -> dict:
        """``model_index.json`` for ``model`` (diffusers' layout, naming the PyTorch classes so either framework reads it)."""
        import diffusers

        entries = {"_class_name": self.pipelines[0], "_diffusers_version": diffusers.__version__, **model.family_options}
        entries["scheduler"] = ["diffusers", model.noise_schedule.to_config()["_class_name"]]
        entries["unet"], entries["vae"] = ["diffusers", "UNet2DConditionModel"], ["diffusers", "AutoencoderKL"]
        for encoder, tokenizer in self.text_folders:
            entries[encoder] = ["transformers", type(model.text_encoders[encoder]).__name__.removeprefix("Flax")]
            entries[tokenizer] = ["transformers", "CLIPTokenizer"]
        return entries

    # Conditioning (all pure; ``encode`` and ``unet_inputs`` run under jit).

    def tokenize(self, tokenizers: Sequence[Any], prompts: Sequence[str], max_length: int) -> np.ndarray:
        """Token ids, padded and truncated as diffusers' pipelines do: [len(prompts), max_length] for one
        tokenizer, [len(prompts), n, max_length] for n."""
        ids = [
            t(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="np").input_ids.astype(np.int32)
            for t in tokenizers
        ]
        return ids[0] if len(ids) == 1 else np.stack(ids, axis=1)

    def encode(self, text_encoders: dict[str, Any], params: dict, token_ids) -> Any:
        """The conditioning pytree (batched) for token ids."""
        raise NotImplementedError

    def unconditional(self, uncond: Any, negative_prompt: str, options: dict) -> Any:
        """The unconditional branch's conditioning, given the encoded negative prompt (unbatched)."""
        return uncond

    def unet_inputs(self, context: Any, image_size: tuple[int, int], dtype) -> tuple[Any, dict | None]:
        """(encoder hidden states, ``added_cond_kwargs``) for the Flax UNet from a batched conditioning pytree."""
        return context.astype(dtype), None

    # Test hooks (need torch).

    def tiny_pytorch_pipeline(self, path: Path, seed: int, scheduler: dict | None, **variant):
        """A tiny random diffusers PyTorch pipeline of this family (32x32 images), not yet saved."""
        raise NotImplementedError

    def reference_conditioning(self, pipe, prompt: str, negative_prompt: str) -> tuple[Any, Any]:
        """The PyTorch pipeline's own (context, uncond) for one prompt as NumPy pytrees shaped like :meth:`encode`'s rows."""
        raise NotImplementedError
