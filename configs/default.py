"""The default job: CoSyNE over the initial noise of the embedded model, maximising the share of red pixels
(``color_fraction:red``) of "a red circle on a blue background".

Run:
    jaxalign run --config configs/default.py --workdir runs/default
"""

from jaxalign.config import default_config


def get_config():
    return default_config()
