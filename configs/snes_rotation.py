"""SNES over rotations of one noise (the paper's rotation search space), maximising saturation.

The search is over c + c^2 = 20 numbers (a channel shift and a 4x4 rotation) instead of the
whole latent, so a distribution-based strategy adapts quickly.

Run:
    jaxalign run --config configs/snes_rotation.py --workdir runs/snes_rotation
"""

from configs import red_pixels


def get_config():
    config = red_pixels.get_config()
    config.method_params = {"strategy": "SNES", "strategy_params": {"std_init": 0.5}, "space": "rotation", "space_params": {"mean_scale": 0.5}}
    config.rewards = {"saturation": 1.0}
    return config
