"""The default job: prompt following on the embedded model. CoSyNE searches the initial noise so that the tiny
CLIP of the embedded world (reward ``clip`` with ``reward_paths.clip="embedded"``, MODEL.md) scores the image as
closer to a prompt whose (shape, colour, background) combination was held out of both models' training and which
names a position and a background, the two attributes the embedded model mostly ignores. ``jaxalign eval`` then
asks the independent judge (``jaxalign.shapes.describe``) which named attributes the baseline and best images show.

Run:
    jaxalign run --config configs/default.py --workdir runs/default
    jaxalign eval --workdir runs/default
"""

from jaxalign.config import default_config


def get_config():
    config = default_config()
    config.prompts = ["a large green circle on a purple background, top right"]
    config.rewards = {"clip": 1.0}
    config.reward_paths = {"clip": "embedded"}
    config.steps = 15
    return config
