"""Model families (:data:`FAMILIES`), one plug-in module each (:mod:`.sd`, :mod:`.sdxl`, :mod:`.sd3`, :mod:`.flux`, :mod:`.pixart`; the interface is
:class:`~.base.ModelFamily`), and :func:`detect_family`. Adding a family is one module and one entry here."""

from __future__ import annotations

from pathlib import Path

from jaxalign.errors import JaxalignError
from jaxalign.models.families.base import ModelFamily
from jaxalign.models.families.flux import Flux
from jaxalign.models.families.pixart import PixArt
from jaxalign.models.families.sd import StableDiffusion
from jaxalign.models.families.sd3 import StableDiffusion3
from jaxalign.models.families.sdxl import StableDiffusionXL
from jaxalign.models.weights import read_json
from jaxalign.registry import Registry

FAMILIES: Registry[ModelFamily] = Registry("model family")
_PIXART = (PixArt("pixart_alpha", "PixArtAlphaPipeline", 120), PixArt("pixart_sigma", "PixArtSigmaPipeline", 300))  # T5 lengths: the pipelines' defaults
for _family in (StableDiffusion(), StableDiffusionXL(), StableDiffusion3(), Flux(), *_PIXART):
    FAMILIES.register(_family.name, _family)


def detect_family(path: Path) -> ModelFamily:
    """The family a diffusers directory belongs to, from ``model_index.json`` (without one: the family with
    the most components whose folders are all there), with every component folder it needs checked."""
    index = path / "model_index.json"
    if index.is_file():
        pipeline = read_json(index).get("_class_name", "")
        matches = [f for f in FAMILIES.values() if pipeline in f.pipelines]
        if not matches:
            known = ", ".join(p for f in FAMILIES.values() for p in f.pipelines)
            raise JaxalignError(f"{index} names pipeline {pipeline!r}; jaxalign loads {known}")
        family = matches[0]
    else:
        def missing_count(f):
            return sum(not (path / c).is_dir() for c in f.directories)

        family = min(FAMILIES.values(), key=lambda f: (missing_count(f), -len(f.directories)))
    missing = [c for c in family.directories if not (path / c).is_dir()]
    if missing:
        raise JaxalignError(f"model directory {path} lacks {', '.join(m + '/' for m in missing)} (expected diffusers layout of a {family.name!r} model)")
    return family


__all__ = ["FAMILIES", "ModelFamily", "detect_family"]
