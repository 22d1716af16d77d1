"""The default job on the embedded SD3-layout flow model (``model="embedded_sd3"``, MODEL.md): CoSyNE searches the
initial noise so that the tiny CLIP of the embedded world scores the image closer to the same held-out prompt as
``configs/default.py``, with the model's own flow-matching Euler scheduler (``auto``) and SD3's CFG 4.5 over 28
steps cut to the embedded job's 10. ``jaxalign eval`` then asks the judge which named attributes the baseline and
best images show.

Run:
    jaxalign run --config configs/default_sd3.py --workdir runs/default_sd3
    jaxalign eval --workdir runs/default_sd3
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "embedded_sd3"
    config.model_family = "sd3"
    config.guidance_scale = 4.5
    return config
