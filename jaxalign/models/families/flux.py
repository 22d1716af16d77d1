"""FLUX.1 dev and schnell (Black Forest Labs 2024): a rectified flow whose transformer (:mod:`jaxalign.models.flux`)
is conditioned on T5's hidden states and CLIP-L's pooled output, as diffusers' ``FluxPipeline`` encodes a prompt,
with T5 over ``max_sequence_length`` tokens: the pipeline's default 512 for dev, and for schnell (no guidance
embedding) the 256 it was distilled with, which Black Forest Labs' and diffusers' examples pass (the pipeline's
default would be 512). Dev embeds the guidance scale (one pass per step, no classifier-free guidance); schnell
takes none. The sigmas are the pipeline's, linspace(1, 1/n, n), shifted
by the scheduler's dynamic shift for the number of image tokens; the autoencoder has 16 channels and a shift factor.
"""

from __future__ import annotations

import numpy as np

from jaxalign.models.families.base import ModelFamily
from jaxalign.models.weights import read_json
from jaxalign.schedulers import RectifiedFlow

MAX_SEQUENCE_LENGTH = {True: 512, False: 256}  # T5 tokens by guidance_embeds: dev, schnell


class Flux(ModelFamily):
    name = "flux"
    pipelines = ("FluxPipeline",)
    text_folders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    denoiser_folder = "transformer"
    noise_process = RectifiedFlow

    def denoiser(self, config, dtype, where):
        from jaxalign.models.flux import Flux as FluxTransformer

        return FluxTransformer.from_config(config, dtype, where)

    def text_encoders(self, path, dtype):
        from transformers import CLIPTextConfig, FlaxCLIPTextModel

        from jaxalign.models.t5 import T5Encoder

        clip = FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"), dtype=dtype, _do_init=False)
        return {"text_encoder": clip, "text_encoder_2": T5Encoder.from_pretrained_config(path / "text_encoder_2", dtype)}

    def load_tokenizer(self, folder, encoder_folder, encoder):
        from jaxalign.models.text import load_t5_tokenizer

        if encoder_folder != "text_encoder_2":
            return super().load_tokenizer(folder, encoder_folder, encoder)
        dev = bool(read_json(folder.parent / self.denoiser_folder / "config.json").get("guidance_embeds", False))
        return load_t5_tokenizer(folder, MAX_SEQUENCE_LENGTH[dev])

    def tokenize(self, tokenizers, prompts):
        return {folder: ids for folder, ids in zip(tokenizers, super().tokenize(tokenizers, prompts, stacked=False))}

    def encode(self, text_encoders, params, token_ids):
        pooled = text_encoders["text_encoder"](token_ids["text_encoder"], params=params["text_encoder"]).pooler_output
        hidden = text_encoders["text_encoder_2"](token_ids["text_encoder_2"], params=params["text_encoder_2"])[0]
        return {"hidden_states": hidden, "pooled": pooled}

    def denoiser_inputs(self, context, image_size, dtype):
        return {"encoder_hidden_states": context["hidden_states"].astype(dtype), "pooled_projections": context["pooled"].astype(dtype)}

    def initial_sigmas(self, num_steps):
        return np.linspace(1.0, 1.0 / num_steps, num_steps)  # FluxPipeline's, before the scheduler's shift

    def tiny_pytorch_pipeline(self, path, seed, scheduler, schnell: bool = False):
        """``schnell`` gives the guidance-free layout (no guidance embedding, no dynamic shift, T5 length 256)."""
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from jaxalign.models.hub import EMBEDDED_DIR
        from jaxalign.testing import perturb_norms_and_biases, tiny_autoencoder, tiny_t5_encoder, tiny_t5_tokenizer, tiny_text_config

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=80, pooled_projection_dim=32, guidance_embeds=not schnell, axes_dims_rope=(4, 6, 6),
        )  # fmt: skip
        vae = tiny_autoencoder(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.36, shift_factor=0.12)
        clip = CLIPTextModel(tiny_text_config())
        t5 = tiny_t5_encoder()
        for i, module in enumerate((transformer, vae, clip, t5)):
            perturb_norms_and_biases(module, seed + i)
        flow = {"shift": 1.0} if schnell else {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler or flow), vae=vae, text_encoder=clip,
            tokenizer=CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer"), text_encoder_2=t5,
            tokenizer_2=tiny_t5_tokenizer(MAX_SEQUENCE_LENGTH[not schnell]), transformer=transformer,
        )  # fmt: skip

    def reference_call(self, pipe, latents):
        from jaxalign.models.flux import pack

        return {"latents": np.asarray(pack(latents)), "max_sequence_length": MAX_SEQUENCE_LENGTH[bool(pipe.transformer.config.guidance_embeds)]}

    def reference_conditioning(self, pipe, prompt, negative_prompt):
        length = MAX_SEQUENCE_LENGTH[bool(pipe.transformer.config.guidance_embeds)]

        def rows(text):
            hidden, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=None, device="cpu", max_sequence_length=length)
            return {"hidden_states": hidden[0].numpy(), "pooled": pooled[0].numpy()}

        return rows(prompt), rows(negative_prompt)
