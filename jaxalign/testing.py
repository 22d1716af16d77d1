"""Tiny random PyTorch models in the layouts real checkpoints use, for parity tests and smoke runs.

No weights can be downloaded where jaxalign is tested, so loading code is proven on small models
built here with diffusers' and transformers' PyTorch classes and written with ``save_pretrained``
(safetensors), exactly as the Hub's directories are. Needs ``torch`` (the ``test`` extra).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jaxalign.models import EMBEDDED_DIR, FAMILIES

_TOKENS = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}  # SD's CLIP tokenizer

# Layouts beyond a family's default: name -> (family, options of its tiny pipeline hook).
TINY_VARIANTS = {
    "lcm": ("sd", {"lcm": True}),  # SD's LCM-distilled layout (guidance embedding, LCMScheduler)
    "sd35": ("sd3", {"qk_norm": "rms_norm", "dual_attention": True}),  # SD 3.5: RMS-normed q/k, MMDiT-X blocks
    "sd35_without_t5": ("sd3", {"qk_norm": "rms_norm", "dual_attention": True, "t5": False}),  # text_encoder_3 left out
    "flux_schnell": ("flux", {"schnell": True}),  # no guidance embedding, no dynamic shift, T5 length 256
}


def tiny_text_config(projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, vocab_size=49408,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=projection_dim, **_TOKENS,
    )  # fmt: skip


def tiny_scheduler_config(**changes) -> dict:
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
        "prediction_type": "epsilon", "timestep_spacing": "leading", **changes,
    }  # fmt: skip


def tiny_t5_tokenizer(max_length: int = 256, lowercase: bool = True):
    """A small T5-style tokenizer (pad 0, end-of-sequence 1 appended, unknown 2), built with the ``tokenizers``
    library over the shapes world's words: real T5 vocabularies cannot be downloaded here. ``lowercase=False``
    leaves capitalised words unknown (as T5's case-sensitive vocabulary tells them apart)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    from jaxalign import shapes

    words = sorted({*shapes.SHAPES, *shapes.SIZES, *shapes.COLOURS, *(w for p in shapes.POSITIONS for w in p.split()), "a", "an", "on", "the", "of", "in", "background", "with", ","})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=max_length)


def tiny_t5_encoder():
    """A tiny random PyTorch T5 encoder (v1.1's gated GELU, width 80) for the tiny_t5_tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=64, d_model=80, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    ))  # fmt: skip


def perturb_norms_and_biases(module, seed: int):
    """Give norms and biases random values (PyTorch initialises them to 1 and 0), so a wrongly
    mapped leaf changes the outputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def tiny_autoencoder(**changes):
    """A tiny random PyTorch KL autoencoder (32x32 images, 16x16 latents, 4 channels unless ``changes`` say otherwise)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (16, 32), "norm_num_groups": 8,
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2, "sample_size": 32, **changes,
    })  # fmt: skip


def tiny_components(seed: int, **unet_changes) -> dict:
    """Tiny random PyTorch UNet (16x16 latents; ``unet_changes`` are the family's UNet config), VAE
    (32x32 images), CLIP text encoder and SD's tokenizer, norms and biases perturbed: the parts every
    family's tiny pipeline shares, as pipeline keyword arguments."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **unet_changes,
    )  # fmt: skip
    vae = tiny_autoencoder()
    text_encoder = CLIPTextModel(tiny_text_config())
    for i, module in enumerate((unet, vae, text_encoder)):
        perturb_norms_and_biases(module, seed + i)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer")}


def tiny_pytorch_pipeline(family: str, path: str | Path, seed: int = 0, scheduler: dict | None = None, **variant):
    """A tiny random diffusers pipeline of ``family`` (a name in :data:`FAMILIES`) saved at ``path`` in
    PyTorch (safetensors) format; returns the PyTorch pipeline. 32x32 images, 16x16 latents. ``variant``
    goes to the family's hook (``lcm=True`` for SD's LCM-distilled layout)."""
    pipe = FAMILIES[family].tiny_pytorch_pipeline(Path(path), seed, scheduler, **variant)
    pipe.set_progress_bar_config(disable=True)
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return pipe


def fake_hf_cache(cache_dir: str | Path, repo_id: str, model_dir: str | Path, revision: str = "0" * 40) -> Path:
    """Place a diffusers directory in the Hugging Face cache layout (``models--org--name/snapshots``)."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


