"""PixArt-α and PixArt-Σ (Chen et al. 2023, arXiv 2310.00426; 2024, arXiv 2403.04692): a variance-preserving
diffusion transformer (:mod:`jaxalign.models.pixart`) conditioned on T5's hidden states with the prompt's padding
mask, as diffusers' ``PixArtAlphaPipeline`` and ``PixArtSigmaPipeline`` encode a prompt: lowercased and stripped
(the pipelines' ``clean_caption=False``; their default caption cleaning needs ``bs4`` and ``ftfy`` and its
regular expressions are not reproduced), padded to ``max_sequence_length`` (120 for α, 300 for Σ), encoded with the
mask, the mask also passed to the transformer's cross-attention. The negative prompt goes the same way.

The two pipelines differ in that length and in the resolution and aspect-ratio conditioning, which α passes
(its 1024² models, ``use_additional_conditions``) and Σ does not: both are one family class, registered twice.
The autoencoder is the 4-channel KL one (SD's for α, SDXL's for Σ); the scheduler is the model's own
(DPM-Solver++ for both, LCM for PixArt-LCM).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxalign.models.families.base import ModelFamily


class PixArt(ModelFamily):
    text_folders = (("text_encoder", "tokenizer"),)
    denoiser_folder = "transformer"

    def __init__(self, name: str, pipeline: str, max_sequence_length: int):
        self.name, self.pipelines, self.max_sequence_length = name, (pipeline,), max_sequence_length

    def denoiser(self, config, dtype, where):
        from jaxalign.models.pixart import PixArt as PixArtTransformer

        return PixArtTransformer.from_config(config, dtype, where)

    def text_encoders(self, path, dtype):
        from jaxalign.models.t5 import T5Encoder

        return {"text_encoder": T5Encoder.from_pretrained_config(path / "text_encoder", dtype)}

    def load_tokenizer(self, folder, encoder_folder, encoder):
        from jaxalign.models.text import load_t5_tokenizer

        return load_t5_tokenizer(folder, self.max_sequence_length)

    def tokenize(self, tokenizers, prompts):
        tokenizer = tokenizers["text_encoder"]
        texts = [p.lower().strip() for p in prompts]  # the pipelines' _text_preprocessing without caption cleaning
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="np")
        return {"input_ids": tokens.input_ids.astype(np.int32), "attention_mask": tokens.attention_mask.astype(np.int32)}

    def encode(self, text_encoders, params, token_ids):
        mask = token_ids["attention_mask"]
        hidden = text_encoders["text_encoder"](token_ids["input_ids"], params=params["text_encoder"], attention_mask=mask)[0]
        return {"hidden_states": hidden, "mask": mask}

    def denoiser_inputs(self, context, image_size, dtype):
        batch = context["hidden_states"].shape[0]
        height, width = image_size
        return {
            "encoder_hidden_states": context["hidden_states"].astype(dtype),
            "encoder_attention_mask": context["mask"],
            # α's pipeline passes (height, width) and height / width; the transformer reads them only where it uses them.
            "resolution": jnp.broadcast_to(jnp.asarray([height, width], jnp.float32), (batch, 2)),
            "aspect_ratio": jnp.full((batch, 1), height / width, jnp.float32),
        }

    def tiny_pytorch_pipeline(self, path, seed, scheduler, additional_conditions: bool | None = None):
        """``scheduler``: a scheduler config (its ``_class_name`` picks the class; DPM-Solver++ as PixArt's by default).
        ``additional_conditions`` sets the transformer's ``use_additional_conditions`` (its default follows
        ``sample_size``, 16 here, so off; diffusers' pipelines pass the resolution only at sample size 128). The
        tokenizer does not lowercase, as T5's does not, so the pipelines' lowercasing matters."""
        import diffusers
        import torch
        from diffusers import PixArtTransformer2DModel

        from jaxalign.testing import perturb_norms_and_biases, tiny_autoencoder, tiny_t5_encoder, tiny_t5_tokenizer

        torch.manual_seed(seed)
        text_encoder = tiny_t5_encoder()
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2, cross_attention_dim=24,
            sample_size=16, patch_size=2, caption_channels=text_encoder.config.d_model, interpolation_scale=2,
            use_additional_conditions=additional_conditions,
        )  # fmt: skip
        vae = tiny_autoencoder(scaling_factor=0.13025)
        for i, module in enumerate((transformer, vae, text_encoder)):
            perturb_norms_and_biases(module, seed + i)
        config = scheduler or {
            "_class_name": "DPMSolverMultistepScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "num_train_timesteps": 1000, "prediction_type": "epsilon", "solver_order": 2, "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint", "lower_order_final": True, "timestep_spacing": "linspace", "steps_offset": 0,
        }  # fmt: skip
        return getattr(diffusers, self.pipelines[0])(
            tokenizer=tiny_t5_tokenizer(self.max_sequence_length, lowercase=False), text_encoder=text_encoder, vae=vae,
            transformer=transformer, scheduler=getattr(diffusers, config["_class_name"]).from_config(config),
        )  # fmt: skip

    def reference_call(self, pipe, latents):
        return {"latents": latents, "use_resolution_binning": False, "clean_caption": False, "max_sequence_length": self.max_sequence_length}

    def reference_conditioning(self, pipe, prompt, negative_prompt):
        import torch

        with torch.no_grad():
            embeds, mask, negative, negative_mask = pipe.encode_prompt(
                prompt, do_classifier_free_guidance=True, negative_prompt=negative_prompt, device="cpu", clean_caption=False,
                max_sequence_length=self.max_sequence_length,
            )  # fmt: skip
        return {"hidden_states": embeds[0].numpy(), "mask": mask[0].numpy()}, {"hidden_states": negative[0].numpy(), "mask": negative_mask[0].numpy()}
