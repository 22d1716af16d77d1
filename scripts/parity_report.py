"""Print the numerical agreement reached between jaxalign and diffusers' / transformers' PyTorch classes
on tiny random models (the tests assert bounds; this reports the actual errors, float32, CPU).

    python scripts/parity_report.py
"""

import json
import tempfile
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxalign.models import FAMILIES, load_clip, load_model
from jaxalign.sampler import make_sampler
from jaxalign.schedulers import LCM_NOISE_SEED, lcm_noise
from jaxalign.testing import TINY_VARIANTS, perturb_norms_and_biases, tiny_pytorch_pipeline

PROMPT = "a red circle on a blue background"


def sample_error(root: Path, layout: str, steps: int = 4, guidance: float = 5.0) -> dict:
    """A ``steps``-step sample of the tiny ``layout`` (a family, or a variant in TINY_VARIANTS) with the model's own
    scheduler, against its PyTorch pipeline from the same initial latents (LCM: the same re-noising noise)."""
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm

    family, options = TINY_VARIANTS.get(layout, (layout, {}))
    pipe = tiny_pytorch_pipeline(family, root / layout, **options)
    model, params = load_model(str(root / layout))
    latents = np.random.default_rng(0).standard_normal((2, model.latent_channels, 16, 16)).astype(np.float32)
    key = jax.random.key(LCM_NOISE_SEED)
    noises = iter([np.broadcast_to(np.asarray(lcm_noise(key, i, latents.shape[1:])), latents.shape).copy() for i in range(steps)])
    call = model.family.reference_call(pipe, latents)
    call["latents"] = torch.tensor(call["latents"])
    with mock.patch.object(scheduling_lcm, "randn_tensor", lambda *a, **k: torch.tensor(next(noises))), torch.no_grad():
        expected = pipe([PROMPT] * 2, num_inference_steps=steps, guidance_scale=guidance, output_type="np", height=32, width=32, **call).images
    context, uncond = model.conditioning(params, PROMPT)
    sampler = make_sampler(model, "auto", steps, image_tokens=model.image_tokens(latents.shape[1:]))
    ours = np.asarray(jax.jit(sampler.sample)(params, jnp.asarray(latents), context, uncond, guidance))
    return {"part": f"{layout}: {steps}-step {sampler.scheduler} sample, guidance {guidance}", "max_abs_error": float(np.abs(ours - expected).max()),
            "image_std": float(expected.std())}  # fmt: skip


def clip_error(root: Path) -> dict:
    from transformers import CLIPConfig, CLIPModel

    tokens = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    config = CLIPConfig(
        projection_dim=16,
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, **tokens),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    model = perturb_norms_and_biases(CLIPModel(config), seed=5)
    model.save_pretrained(root / "clip", safe_serialization=True)
    clip, params = load_clip(str(root / "clip"))
    pixels = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
    ids = clip.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).numpy()
        text = model.get_text_features(input_ids=ids).numpy()
    return {
        "part": "CLIP image and text features",
        "max_abs_error": max(float(np.abs(np.asarray(clip.image_features(params, jnp.asarray(pixels))) - image).max()),
                             float(np.abs(np.asarray(clip.text_features(params, jnp.asarray(clip.tokenize([PROMPT])))) - text).max())),
        "feature_std": float(image.std()),
    }  # fmt: skip


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for layout in (*FAMILIES, *TINY_VARIANTS):
            print(json.dumps(sample_error(root, layout, guidance=6.0 if layout == "lcm" else 5.0)), flush=True)
        print(json.dumps(clip_error(root)))


if __name__ == "__main__":
    main()
