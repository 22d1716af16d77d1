"""Stable Diffusion 3.5 medium, the paper's figure model, as the reference's ``configs/sd3.yaml``: 512x512, 28
flow-matching Euler steps (the model's own ``FlowMatchEulerDiscreteScheduler``, shift 3.0, through
``scheduler="auto"``), CFG 4.5, CoSyNE with popsize 16 on the initial noise for 15 generations, maximising
saturation (its active fitness), seed 32132 and its prompt. The reference runs float16 with CPU offload; jaxalign
runs bfloat16 on the accelerator.

The weights are read from the local Hugging Face cache (nothing is downloaded) or from a local diffusers
directory given with ``--config.model``:
    jaxalign run --config configs/sd35_medium.py --workdir runs/sd35_medium
    jaxalign run --config configs/sd35_medium.py --config.model=/models/stable-diffusion-3.5-medium --workdir runs/sd35_medium
"""

from configs import red_pixels


def get_config():
    config = red_pixels.get_config()
    config.model = "stabilityai/stable-diffusion-3.5-medium"
    config.model_family = "sd3"
    config.prompts = [
        "sculpture exploding in a white museum, painting on the wall, 3D hyper-realistic, Ektar photographic, soft golden hour "
        "light, sharp focus, vivid colors, crisp details, dynamic perspective"
    ]
    config.seed = 32132
    config.steps = 15
    config.height = config.width = 512
    config.scheduler = "auto"
    config.num_inference_steps = 28
    config.guidance_scale = 4.5
    config.rewards = {"saturation": 1.0}
    config.popsize = 16
    config.dtype = "bfloat16"
    return config
