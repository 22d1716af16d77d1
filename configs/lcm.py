"""An LCM-distilled SD 1.5 (LCM Dreamshaper v7): 4 latent-consistency steps, guidance 8.0 through the
UNet's guidance embedding (no classifier-free guidance pass), so a generation costs 4 NFE per member.

    jaxalign run --config configs/lcm.py --workdir runs/lcm
"""

from configs import sd15


def get_config():
    config = sd15.get_config()
    config.model = "SimianLuo/LCM_Dreamshaper_v7"
    config.scheduler = "lcm"
    config.num_inference_steps = 4
    config.guidance_scale = 8.0
    return config
