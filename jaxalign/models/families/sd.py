"""Stable Diffusion 1.x/2.x (Rombach et al. 2022, arXiv 2112.10752) and its LCM-distilled variants (Luo et al.
2023, arXiv 2310.04378): one CLIP text encoder whose last hidden states condition the UNet."""

from __future__ import annotations

from jaxalign.models.families.base import ModelFamily


class StableDiffusion(ModelFamily):
    name = "sd"
    pipelines = ("StableDiffusionPipeline", "FlaxStableDiffusionPipeline", "LatentConsistencyModelPipeline")
    text_folders = (("text_encoder", "tokenizer"),)

    def text_encoders(self, path, dtype):
        from transformers import CLIPTextConfig, FlaxCLIPTextModel

        return {"text_encoder": FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"), dtype=dtype, _do_init=False)}

    def encode(self, text_encoders, params, token_ids):
        return text_encoders["text_encoder"](token_ids, params=params["text_encoder"])[0]

    def tiny_pytorch_pipeline(self, path, seed, scheduler, lcm: bool = False):
        """``lcm`` gives the LCM-distilled layout: a UNet with a guidance embedding (``time_cond_proj_dim``),
        ``LCMScheduler`` and ``LatentConsistencyModelPipeline``."""
        from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline

        from jaxalign.testing import tiny_components, tiny_scheduler_config

        parts = tiny_components(seed, cross_attention_dim=32, attention_head_dim=4, time_cond_proj_dim=8 if lcm else None)
        if lcm:
            scheduler = LCMScheduler.from_config(scheduler or tiny_scheduler_config(_class_name="LCMScheduler"))
            return LatentConsistencyModelPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        scheduler = DDIMScheduler.from_config(scheduler or tiny_scheduler_config())
        return StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def reference_conditioning(self, pipe, prompt, negative_prompt):
        context, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative_prompt or None)
        return context[0].numpy(), uncond[0].numpy()
