"""DAS as its official SDXL runs: krafton-ai/DAS ``config/sdxl.py``. The SD 1.5 runs' settings
(``configs/das_sd15.py``: 100 DDIM steps with eta 1, CFG 5.0, 4 particles, gamma 0.008, alpha per reward) on SDXL
base at 1024²:

    jaxalign run --config configs/das_sdxl.py:aesthetic --workdir runs/das_sdxl_aesthetic
    jaxalign run --config configs/das_sdxl.py:clip --workdir runs/das_sdxl_clip
"""

from configs import das_sd15, sdxl


def get_config(reward: str = "aesthetic"):
    config = das_sd15.get_config(reward)
    model = sdxl.get_config()
    for field in ("model", "model_family", "height", "width"):
        config[field] = model[field]
    return config
