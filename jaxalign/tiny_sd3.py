"""The embedded tiny SD3-layout model (``model="embedded_sd3"``): the paper's own model family (an MMDiT on a
rectified flow, Esser et al. 2024, arXiv 2403.03206) in miniature, trained here on the shapes world because no SD3
weights can be downloaded.

Its layout is diffusers' ``StableDiffusion3Pipeline``'s, so the SD3 family loads it like any SD 3.5 directory: a
tiny SD 3.5-style transformer (RMS-normed queries and keys, MMDiT-X blocks in its first two layers) on 8x8x4
latents in patches of one, the SD3 pair of CLIP text encoders with projections at tiny size, no T5 (the pipeline
then feeds 256 zero tokens), the embedded UNet model's trained autoencoder given a shift factor and a scale
measured on the data, and ``FlowMatchEulerDiscreteScheduler`` without a shift. :func:`train` trains the text
encoders and the transformer together with the rectified-flow loss (:func:`jaxalign.train.rectified_flow_loss`)
on the same captions and held-out triples as the UNet model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from jaxalign.models import EMBEDDED_DIR, load_model
from jaxalign.train import StageConfig, train_tiny

TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel", "sample_size": 8, "patch_size": 1, "in_channels": 4, "out_channels": 4, "num_layers": 4,
    "attention_head_dim": 24, "num_attention_heads": 4, "joint_attention_dim": 64, "caption_projection_dim": 96,
    "pooled_projection_dim": 64, "pos_embed_max_size": 8, "dual_attention_layers": [0, 1], "qk_norm": "rms_norm",
}  # fmt: skip
CLIP_TEXT = {
    "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32,
    "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}  # fmt: skip
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}


def write_config_dir(path: Path) -> None:
    """The SD3-layout directory training starts from: configs, the CLIP tokenizers, the embedded autoencoder's config."""
    for folder, config, name in (("transformer", TRANSFORMER, "config.json"), ("text_encoder", CLIP_TEXT, "config.json"),
                                 ("text_encoder_2", CLIP_TEXT, "config.json"), ("scheduler", SCHEDULER, "scheduler_config.json")):  # fmt: skip
        (path / folder).mkdir(parents=True)
        (path / folder / name).write_text(json.dumps(config, indent=2) + "\n")
    (path / "vae").mkdir()
    shutil.copy(EMBEDDED_DIR / "vae" / "config.json", path / "vae" / "config.json")
    for folder in ("tokenizer", "tokenizer_2"):
        shutil.copytree(EMBEDDED_DIR / "tokenizer", path / folder)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}) + "\n")


def train(workdir: Path, out_dir: Path, denoiser: StageConfig, data_seed: int = 0, progress: bool = True):
    """Train from the layout above on the embedded autoencoder (float16 weights exported to ``out_dir``);
    resumable from ``workdir`` with the same batches. Returns (model, params)."""
    config_dir = Path(tempfile.mkdtemp(prefix="jaxalign-tiny-sd3-"))
    try:
        write_config_dir(config_dir)
        _, embedded = load_model("embedded")
        return train_tiny(
            config_dir, workdir, out_dir, autoencoder=None, denoiser=denoiser, data_seed=data_seed, progress=progress,
            pretrained_vae=embedded["vae"], shift=True, export_dtype="float16",
        )  # fmt: skip
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
