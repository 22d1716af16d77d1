"""Stable Diffusion 3 and 3.5 (Esser et al. 2024, arXiv 2403.03206): a rectified flow whose MMDiT transformer
(:mod:`jaxalign.models.mmdit`) is conditioned on three text encoders, as diffusers' ``StableDiffusion3Pipeline``
encodes a prompt:

* CLIP-L and CLIP-G (``CLIPTextModelWithProjection``): their penultimate hidden states (``clip_skip`` none, as the
  pipeline's default) concatenated along channels and zero-padded to ``joint_attention_dim``;
* T5 (``text_encoder_3``): its last hidden states over ``max_sequence_length`` (256) tokens, or zeros of that
  shape where the model has no T5 (``text_encoder_3`` absent, as diffusers allows): those 256 identical tokens are
  passed as one token counted 256 times (``context_counts``, exact: see :class:`~jaxalign.models.mmdit.MMDiTModule`);
* the sequence is the CLIP tokens then the T5 tokens; the pooled embedding is both CLIP projections concatenated.

The negative prompt goes through the same path (an empty one is encoded, not zeroed). The autoencoder has 16
channels, a shift factor and no quant convs (read from its config).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign.models.families.base import ModelFamily
from jaxalign.schedulers import RectifiedFlow

MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


class StableDiffusion3(ModelFamily):
    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)
    text_folders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))
    optional_folders = ("text_encoder_3", "tokenizer_3")
    denoiser_folder = "transformer"
    noise_process = RectifiedFlow

    def denoiser(self, config, dtype, where):
        from jaxalign.models.mmdit import MMDiT

        return MMDiT.from_config(config, dtype, where)

    def text_encoders(self, path, dtype):
        from transformers import CLIPTextConfig, FlaxCLIPTextModelWithProjection

        from jaxalign.models.t5 import T5Encoder

        encoders = {
            folder: FlaxCLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(path / folder), dtype=dtype, _do_init=False)
            for folder in ("text_encoder", "text_encoder_2")
        }
        if (path / "text_encoder_3").is_dir():
            encoders["text_encoder_3"] = T5Encoder.from_pretrained_config(path / "text_encoder_3", dtype)
        return encoders

    def load_tokenizer(self, folder, encoder_folder, encoder):
        from jaxalign.models.text import load_t5_tokenizer

        if encoder_folder == "text_encoder_3":
            return load_t5_tokenizer(folder, MAX_SEQUENCE_LENGTH)
        return super().load_tokenizer(folder, encoder_folder, encoder)

    def tokenize(self, tokenizers, prompts):
        # One array per tokenizer: the CLIPs take 77 tokens, T5 256.
        return {folder: ids for folder, ids in zip(tokenizers, super().tokenize(tokenizers, prompts, stacked=False))}

    def encode(self, text_encoders, params, token_ids):
        hidden, pooled = [], []
        for folder in ("text_encoder", "text_encoder_2"):
            out = text_encoders[folder](token_ids[folder], params=params[folder], output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        clip = jnp.concatenate(hidden, axis=-1)
        batch = clip.shape[0]
        pooled = jnp.concatenate(pooled, axis=-1)
        if "text_encoder_3" in text_encoders:
            t5 = text_encoders["text_encoder_3"](token_ids["text_encoder_3"], params=params["text_encoder_3"])[0]
            clip = jnp.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))
            return {"hidden_states": jnp.concatenate([clip, t5.astype(clip.dtype)], axis=1), "pooled": pooled}
        zeros = jnp.zeros((batch, 1, self.joint_attention_dim(params)), clip.dtype)  # the 256 zero T5 tokens, as one
        clip = jnp.pad(clip, ((0, 0), (0, 0), (0, zeros.shape[-1] - clip.shape[-1])))
        counts = jnp.broadcast_to(jnp.asarray([1.0] * clip.shape[1] + [float(MAX_SEQUENCE_LENGTH)]), (batch, clip.shape[1] + 1))
        return {"hidden_states": jnp.concatenate([clip, zeros], axis=1), "pooled": pooled, "context_counts": counts}

    @staticmethod
    def joint_attention_dim(params) -> int:
        """The transformer's text width, read off its context embedder (the zero T5 tokens' width)."""
        return int(params["transformer"]["context_embedder"]["kernel"].shape[0])

    def denoiser_inputs(self, context, image_size, dtype):
        inputs = {"encoder_hidden_states": context["hidden_states"].astype(dtype), "pooled_projections": context["pooled"].astype(dtype)}
        return {**inputs, "context_counts": context["context_counts"]} if "context_counts" in context else inputs

    def tiny_pytorch_pipeline(self, path, seed, scheduler, qk_norm: str | None = None, dual_attention: bool = False, t5: bool = True):
        """``qk_norm="rms_norm"`` and ``dual_attention`` give SD 3.5's layout (RMS-normalised queries and keys, MMDiT-X
        blocks); ``t5=False`` leaves ``text_encoder_3`` out."""
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        from jaxalign.models.hub import EMBEDDED_DIR
        from jaxalign.testing import perturb_norms_and_biases, tiny_autoencoder, tiny_t5_encoder, tiny_t5_tokenizer, tiny_text_config

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=80, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16, pos_embed_max_size=12,
            qk_norm=qk_norm, dual_attention_layers=(0,) if dual_attention else (),
        )  # fmt: skip
        vae = tiny_autoencoder(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5, shift_factor=0.1)
        clip_l = CLIPTextModelWithProjection(tiny_text_config())
        clip_g = CLIPTextModelWithProjection(tiny_text_config())
        parts = [transformer, vae, clip_l, clip_g]
        text_encoder_3 = tokenizer_3 = None
        if t5:
            text_encoder_3, tokenizer_3 = tiny_t5_encoder(), tiny_t5_tokenizer()
            parts.append(text_encoder_3)
        for i, module in enumerate(parts):
            perturb_norms_and_biases(module, seed + i)
        tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer")
        return StableDiffusion3Pipeline(
            transformer=transformer, vae=vae, text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler or {"shift": 3.0}),
        )  # fmt: skip

    def reference_conditioning(self, pipe, prompt, negative_prompt):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, prompt, prompt, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative_prompt or None,
        )  # fmt: skip

        def rows(hidden, pooled):
            hidden = hidden[0].numpy()
            if pipe.text_encoder_3 is not None:
                return {"hidden_states": hidden, "pooled": pooled[0].numpy()}
            clip = hidden.shape[0] - MAX_SEQUENCE_LENGTH  # the pipeline's zero T5 tokens, as encode() counts them
            assert not hidden[clip:].any()
            return {"hidden_states": hidden[: clip + 1], "pooled": pooled[0].numpy(), "context_counts": np.asarray([1.0] * clip + [MAX_SEQUENCE_LENGTH], np.float32)}

        return rows(embeds, pooled), rows(negative, negative_pooled)


