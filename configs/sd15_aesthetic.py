"""SD 1.5 aligned to the LAION aesthetic predictor (CLIP ViT-L/14 + MLP), the paper's main objective.

Needs the predictor's MLP file and CLIP ViT-L/14 (a local directory or the cached
``openai/clip-vit-large-patch14``):
    jaxalign run --config configs/sd15_aesthetic.py \\
        --config.reward_paths.aesthetic=/models/sac+logos+ava1-l14-linearMSE.pth --workdir runs/sd15_aesthetic
"""

from configs import sd15


def get_config():
    config = sd15.get_config()
    config.rewards = {"aesthetic": 1.0}
    config.reward_paths = {"aesthetic": {"path": "sac+logos+ava1-l14-linearMSE.pth", "clip": "openai/clip-vit-large-patch14"}}
    return config
