"""Stable Diffusion 2.1 (768x768, v-prediction read from its scheduler config), DDIM, otherwise as SD 1.5.

    jaxalign run --config configs/sd21.py --workdir runs/sd21
"""

from configs import sd15


def get_config():
    config = sd15.get_config()
    config.model = "stabilityai/stable-diffusion-2-1"
    config.height = config.width = 768
    config.scheduler = "ddim"
    return config
