"""The method comparison in miniature on the embedded SD3-layout flow model (``model="embedded_sd3"``): the same 24
held-out prompts, 3 seeds, every method and EA strategy, tiny-CLIP reward and 880 counted model evaluations per run
as ``configs/sweep_miniature.py``, on a rectified flow with SD3's CFG 4.5; SVDD, DSearch and DAS step through the
flow's DDIM(eta) transition.

Run from the repository root, then re-score and judge, then tabulate:

    python scripts/sweep.py --config configs/sweep_miniature_sd3.py --workdir runs/sweep_miniature_sd3
    jaxalign eval --workdir runs/sweep_miniature_sd3
    python scripts/method_table.py --workdir runs/sweep_miniature_sd3
"""

from configs import sweep_miniature


def get_config():
    config = sweep_miniature.get_config()
    config.base.model = "embedded_sd3"
    config.base.model_family = "sd3"
    config.base.guidance_scale = 4.5
    return config
