"""Text-to-image diffusion models behind one small, pure interface; the only package of jaxalign that touches
diffusers' and transformers' Flax classes (``FlaxUNet2DConditionModel``, diffusers' Flax VAE encoder and decoder,
``FlaxCLIPTextModel``, ``FlaxCLIPTextModelWithProjection``, ``FlaxCLIPModel``, ``FlaxDinov2Model``).

One module per concept:

* :mod:`.diffusion`: the :class:`DiffusionModel` interface;
* :mod:`.families`: model families as plug-ins (one module each), their registry and family detection;
* :mod:`.unet`: the UNet denoiser, its attention choices and the LCM guidance embedding;
* :mod:`.autoencoder`: the KL autoencoder (scaling and shift factors, optional quant convs);
* :mod:`.hub`: where files are (embedded model, local directories, the Hugging Face cache, offline);
* :mod:`.weights`: weight files, readers, PyTorch -> Flax renaming, shape checks, seeded init;
* :mod:`.text`: tokenizers;
* :mod:`.loading`: loading, initialising and saving diffusion models;
* :mod:`.clip`: CLIP models for the learned rewards;
* :mod:`.dinov2`: DINOv2 image features for the novelty reward.
"""

from jaxalign.models.clip import ClipModel, init_clip, load_clip, load_open_clip, open_clip_to_transformers
from jaxalign.models.diffusion import CLASSIFIER_FREE, DTYPES, EMBEDDED_GUIDANCE, NO_GUIDANCE, DiffusionModel, Params, with_latent_scale
from jaxalign.models.families import FAMILIES, ModelFamily, detect_family
from jaxalign.models.hub import EMBEDDED, EMBEDDED_CLIP_DIR, EMBEDDED_DIR, EMBEDDED_MODELS, EMBEDDED_SD3, EMBEDDED_SD3_DIR, hf_cache_dir, resolve_model_dir
from jaxalign.models.loading import init_model, load_model, save_model
from jaxalign.models.unet import ATTENTION, guidance_scale_embedding
from jaxalign.models.weights import read_state_dict, read_weights, seeded_init

__all__ = [
    "ATTENTION", "CLASSIFIER_FREE", "DTYPES", "EMBEDDED_GUIDANCE", "NO_GUIDANCE", "EMBEDDED", "EMBEDDED_CLIP_DIR", "EMBEDDED_DIR", "EMBEDDED_MODELS", "EMBEDDED_SD3", "EMBEDDED_SD3_DIR", "FAMILIES", "ClipModel", "DiffusionModel", "ModelFamily", "Params",
    "detect_family", "guidance_scale_embedding", "hf_cache_dir", "init_clip", "init_model", "load_clip", "load_model", "load_open_clip",
    "open_clip_to_transformers", "read_state_dict", "read_weights", "resolve_model_dir", "save_model", "seeded_init",
    "with_latent_scale",
]  # fmt: skip
