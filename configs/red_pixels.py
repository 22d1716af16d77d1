"""The colour job (the default job before the prompt-following one): CoSyNE over the initial noise of the embedded
model, maximising the share of red pixels (``color_fraction:red``) of "a red circle on a blue background". The model
reaches it by painting everything red, which ``jaxalign eval``'s judge reports (the shape and background are lost).

Run:
    jaxalign run --config configs/red_pixels.py --workdir runs/red_pixels
"""

from jaxalign.config import default_config


def get_config():
    return default_config()
