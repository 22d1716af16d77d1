"""Stable Diffusion XL (Podell et al. 2023, arXiv 2307.01952): two CLIP text encoders whose penultimate
hidden states are concatenated, the second encoder's pooled projection, and size micro-conditioning; the
conditioning is a dict pytree ``{"hidden_states", "text_embeds"}``."""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign.models.families.base import ModelFamily


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline", "FlaxStableDiffusionXLPipeline")
    text_folders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

    def text_encoders(self, path, dtype):
        from transformers import CLIPTextConfig, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection

        return {
            "text_encoder": FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"), dtype=dtype, _do_init=False),
            "text_encoder_2": FlaxCLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(path / "text_encoder_2"), dtype=dtype, _do_init=False),
        }

    def options(self, index):
        # SDXL pipelines replace an empty negative prompt by all-zero conditioning unless the index says otherwise.
        return {"force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True))}

    def encode(self, text_encoders, params, token_ids):
        first = text_encoders["text_encoder"](token_ids[:, 0], params=params["text_encoder"], output_hidden_states=True)
        second = text_encoders["text_encoder_2"](token_ids[:, 1], params=params["text_encoder_2"], output_hidden_states=True)
        hidden = jnp.concatenate([first.hidden_states[-2], second.hidden_states[-2]], axis=-1)
        return {"hidden_states": hidden, "text_embeds": second.text_embeds}

    def unconditional(self, uncond, negative_prompt, options):
        if options["force_zeros_for_empty_prompt"] and not negative_prompt:
            return {name: jnp.zeros_like(x) for name, x in uncond.items()}
        return uncond

    def denoiser_inputs(self, context, image_size, dtype):
        # Micro-conditioning: original size, crop top-left (0, 0), target size, all the output size.
        height, width = image_size
        batch = context["hidden_states"].shape[0]
        time_ids = jnp.broadcast_to(jnp.array([height, width, 0, 0, height, width], dtype), (batch, 6))
        added = {"text_embeds": context["text_embeds"].astype(dtype), "time_ids": time_ids}
        return {"encoder_hidden_states": context["hidden_states"].astype(dtype), "added_cond_kwargs": added}

    def tiny_pytorch_pipeline(self, path, seed, scheduler):
        from diffusers import DDIMScheduler, StableDiffusionXLPipeline
        from transformers import CLIPTextModelWithProjection

        from jaxalign.testing import perturb_norms_and_biases, tiny_components, tiny_scheduler_config, tiny_text_config

        parts = tiny_components(
            seed, cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
        )  # fmt: skip
        text_encoder_2 = perturb_norms_and_biases(CLIPTextModelWithProjection(tiny_text_config()), seed + 3)
        return StableDiffusionXLPipeline(
            **parts, text_encoder_2=text_encoder_2, tokenizer_2=parts["tokenizer"],
            scheduler=DDIMScheduler.from_config(scheduler or tiny_scheduler_config()),
        )  # fmt: skip

    def reference_conditioning(self, pipe, prompt, negative_prompt):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative_prompt or None)
        return (
            {"hidden_states": embeds[0].numpy(), "text_embeds": pooled[0].numpy()},
            {"hidden_states": negative[0].numpy(), "text_embeds": negative_pooled[0].numpy()},
        )
