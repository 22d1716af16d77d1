"""CoSyNE on the 60 Open Image Preferences prompts the paper's reference used, with a 60 s budget each.

The prompt file lives in the shared data folder beside the checkout; run from the repository root:
    jaxalign run --config configs/open_image_preferences.py --workdir runs/oip
"""

from configs import red_pixels


def get_config():
    config = red_pixels.get_config()
    config.prompt_file = "../shared/data/open_image_preferences_60.csv"
    config.max_seconds = 60.0
    config.rewards = {"jpeg_compressibility": 1.0, "luma_rms_contrast": 10.0}
    return config
