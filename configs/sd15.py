"""Stable Diffusion 1.5 (512x512, CFG 7.5, popsize 16): CoSyNE on the initial noise, maximising JPEG
compressibility, the paper's weight-free objective. The sampler is the reference's (its
``StableDiffusionPipeline`` defaults): 50 PNDM (PLMS) steps, which are 51 UNet passes per image.

The weights are read from the local Hugging Face cache (nothing is downloaded) or from a local
diffusers directory given with ``--config.model``:
    jaxalign run --config configs/sd15.py --workdir runs/sd15
    jaxalign run --config configs/sd15.py --config.model=/models/stable-diffusion-v1-5 --workdir runs/sd15
"""

from configs import red_pixels


def get_config():
    config = red_pixels.get_config()
    config.model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    config.model_family = "sd"
    config.prompts = ["a photograph of an astronaut riding a horse"]
    config.height = config.width = 512
    config.scheduler = "pndm"  # SD 1.5's own scheduler_config (PNDMScheduler, skip_prk_steps)
    config.num_inference_steps = 50
    config.guidance_scale = 7.5
    config.rewards = {"jpeg_compressibility": 1.0}
    config.dtype = "bfloat16"
    return config
