"""Stable Diffusion XL base 1.0 (1024x1024, two text encoders, pooled embeddings, size conditioning),
30 DDIM steps, CFG 5.0.

    jaxalign run --config configs/sdxl.py --workdir runs/sdxl
"""

from configs import sd15


def get_config():
    config = sd15.get_config()
    config.model = "stabilityai/stable-diffusion-xl-base-1.0"
    config.model_family = "sdxl"
    config.height = config.width = 1024
    config.scheduler = "ddim"  # SDXL's own scheduler is not PNDM
    config.num_inference_steps = 30
    config.guidance_scale = 5.0
    return config
