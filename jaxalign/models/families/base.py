"""What a model family is: the plug-in interface that :class:`~jaxalign.models.diffusion.DiffusionModel`,
loading, saving, the sampler and the tests call, so that nothing else asks which family a model belongs to.

A family owns everything that differs between model families:

* its **conditioner**: text encoders and tokenizers (:meth:`~ModelFamily.text_encoders`, :meth:`~ModelFamily.tokenize`,
  ``text_folders``), the conditioning pytree (:meth:`~ModelFamily.encode`) and the unconditional branch
  (:meth:`~ModelFamily.unconditional`);
* its **denoiser**: the network (:meth:`~ModelFamily.denoiser`; a diffusers Flax class where one exists, a Flax
  module of jaxalign's otherwise) in the folder ``denoiser_folder``, and what it takes
  (:meth:`~ModelFamily.denoiser_inputs`); the network says whether guidance enters through classifier-free
  guidance (two branches), an embedding (one pass: LCM, Flux-dev) or not at all (Flux-schnell), its latent size
  multiple and its time input; and the sigma grid its pipeline hands a flow scheduler (:meth:`~ModelFamily.initial_sigmas`);
* its **autoencoder** (:meth:`~ModelFamily.autoencoder`: channels, scaling and shift factors, quant convs);
* its **noise process** (``noise_process``: :class:`~jaxalign.schedulers.VariancePreserving` or
  :class:`~jaxalign.schedulers.RectifiedFlow`), which the schedulers it can be sampled with must fit;
* its **loading and saving**: pipeline class names, component folders, ``model_index.json`` entries
  (:meth:`~ModelFamily.index`, :meth:`~ModelFamily.options`);
* two **test hooks**: a tiny random PyTorch pipeline of its layout and that pipeline's own prompt encoding.

The worked example is :mod:`.sd` (Stable Diffusion 1.x/2.x and LCM): one CLIP text encoder whose last hidden
states are the conditioning, the diffusers Flax UNet as denoiser (its defaults here), the KL autoencoder,
the variance-preserving process. :mod:`.sdxl` changes the conditioner and the UNet inputs only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.schedulers import VariancePreserving


class ModelFamily:
    """One family of diffusers pipelines that share a model layout (subclass per family)."""

    name: str
    pipelines: tuple[str, ...]  # model_index.json "_class_name" values; the first is the one saved
    text_folders: tuple[tuple[str, str], ...]  # (text encoder folder, its tokenizer folder), in encoding order
    optional_folders: tuple[str, ...] = ()  # folders a model of the family may lack (SD3's T5)
    denoiser_folder: str = "unet"  # also the denoiser's key in the params pytree
    noise_process: type = VariancePreserving

    @property
    def components(self) -> tuple[str, ...]:
        """Subdirectories with weights; their names are also the params pytree's top-level keys."""
        return (self.denoiser_folder, "vae", *(encoder for encoder, _ in self.text_folders))

    @property
    def directories(self) -> tuple[str, ...]:
        """The component folders every model of the family has, and its scheduler's."""
        return tuple(d for d in (*self.components, "scheduler") if d not in self.optional_folders)

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"

    # Loading and saving.

    def denoiser(self, config: dict, dtype, where: str) -> Any:
        """The denoising network (static, called with its params) from its ``config.json``; options it does not
        implement are refused naming ``where``."""
        from jaxalign.models.unet import UNet

        return UNet.from_config(config, dtype, where)

    def autoencoder(self, config: dict, dtype, where: str) -> Any:
        from jaxalign.models.autoencoder import AutoencoderKL

        return AutoencoderKL.from_config(config, dtype, where)

    def text_encoders(self, path: Path, dtype) -> dict[str, Any]:
        """Flax text encoder modules (built without weights), keyed by folder, from ``path``'s configs."""
        raise NotImplementedError

    def load_tokenizer(self, folder: Path, encoder_folder: str, encoder) -> Any:
        """The tokenizer in ``folder`` for the text encoder of ``encoder_folder`` (CLIP's, capped at the encoder's positions)."""
        from jaxalign.models.text import load_tokenizer

        return load_tokenizer(folder, encoder.config.max_position_embeddings)

    def options(self, index: dict) -> dict:
        """Family settings read from ``model_index.json`` (empty when there is none); saved back by :meth:`index`."""
        return {}

    def index(self, model) -> dict:
        """``model_index.json`` for ``model`` (diffusers' layout, naming the PyTorch classes so either framework reads it)."""
        import diffusers

        entries = {"_class_name": self.pipelines[0], "_diffusers_version": diffusers.__version__, **model.family_options}
        entries["scheduler"] = ["diffusers", model.scheduler_config["_class_name"]]
        entries[self.denoiser_folder] = ["diffusers", model.network.config["_class_name"]]
        entries["vae"] = ["diffusers", model.autoencoder.config["_class_name"]]
        for encoder, tokenizer_folder in self.text_folders:
            if encoder not in model.text_encoders:  # an optional encoder the model lacks, as diffusers writes it
                entries[encoder] = entries[tokenizer_folder] = [None, None]
                continue
            entries[encoder] = ["transformers", _pytorch_class(model.text_encoders[encoder])]
            entries[tokenizer_folder] = ["transformers", type(model.tokenizers[encoder]).__name__]
        return entries

    # Conditioning (all pure; ``encode`` and ``denoiser_inputs`` run under jit).

    def tokenize(self, tokenizers: Mapping[str, Any], prompts: Sequence[str], stacked: bool = True) -> Any:
        """Token ids, padded and truncated to each tokenizer's length as diffusers' pipelines do: [len(prompts),
        length] for one tokenizer, [len(prompts), n, length] for n of one length (``stacked``), else a list."""
        ids = [
            t(list(prompts), padding="max_length", max_length=t.model_max_length, truncation=True, return_tensors="np").input_ids.astype(np.int32)
            for t in tokenizers.values()
        ]
        if not stacked:
            return ids
        return ids[0] if len(ids) == 1 else np.stack(ids, axis=1)

    def encode(self, text_encoders: dict[str, Any], params: dict, token_ids) -> Any:
        """The conditioning pytree (batched) for token ids."""
        raise NotImplementedError

    def unconditional(self, uncond: Any, negative_prompt: str, options: dict) -> Any:
        """The unconditional branch's conditioning, given the encoded negative prompt (unbatched)."""
        return uncond

    def initial_sigmas(self, num_steps: int):
        """The sigma grid the family's pipeline hands a flow scheduler before its shift (``set_timesteps(sigmas=...)``),
        or ``None`` for the scheduler's own grid."""
        return None

    def denoiser_inputs(self, context: Any, image_size: tuple[int, int], dtype) -> dict:
        """The network's conditioning inputs from a batched conditioning pytree (UNet: ``encoder_hidden_states``)."""
        return {"encoder_hidden_states": context.astype(dtype)}

    # Test hooks (need torch).

    def tiny_pytorch_pipeline(self, path: Path, seed: int, scheduler: dict | None, **variant):
        """A tiny random diffusers PyTorch pipeline of this family (32x32 images), not yet saved."""
        raise NotImplementedError

    def reference_conditioning(self, pipe, prompt: str, negative_prompt: str) -> tuple[Any, Any]:
        """The PyTorch pipeline's own (context, uncond) for one prompt as NumPy pytrees shaped like :meth:`encode`'s rows."""
        raise NotImplementedError

    def reference_call(self, pipe, latents: np.ndarray) -> dict:
        """Keyword arguments of the PyTorch pipeline's ``__call__`` for initial latents [B, c, h, w] as jaxalign holds
        them (in the pipeline's own format, with the pipeline settings jaxalign uses)."""
        return {"latents": latents}


def _pytorch_class(encoder) -> str:
    """The PyTorch class a text encoder's weights belong to: transformers' Flax classes are named after theirs
    (``FlaxCLIPTextModel``); jaxalign's own encoders say it (``pytorch_class``)."""
    return getattr(encoder, "pytorch_class", None) or type(encoder).__name__.removeprefix("Flax")
