"""DAS as its official LCM runs: krafton-ai/DAS ``config/lcm.py``. LCM Dreamshaper v7, 8 LCM steps with eta 0.5,
guidance 7.5 through the UNet's guidance embedding, 4 particles, gamma 0.1, alpha per reward as the SD 1.5 runs
(``configs/das_sd15.py``):

    jaxalign run --config configs/das_lcm.py:aesthetic --workdir runs/das_lcm_aesthetic
    jaxalign run --config configs/das_lcm.py:clip --workdir runs/das_lcm_clip
"""

from configs import das_sd15, lcm


def get_config(reward: str = "aesthetic"):
    config = das_sd15.get_config(reward)
    config.model = lcm.get_config().model
    config.scheduler = "lcm"
    config.num_inference_steps = 8
    config.guidance_scale = 7.5
    config.method_params.tempering_gamma = 0.1
    config.method_params.eta = 0.5
    return config
