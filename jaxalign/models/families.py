"""Model families (:data:`FAMILIES`): which diffusers pipelines a family loads and which component folders
it needs; ``sd`` (SD 1.x/2.x, LCM-distilled SD) and ``sdxl``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxalign.errors import JaxalignError
from jaxalign.models.weights import read_json
from jaxalign.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What a family's diffusers directory holds: its pipeline classes and weighted components."""

    name: str
    pipelines: tuple[str, ...]  # model_index.json "_class_name" values of this family
    components: tuple[str, ...]  # subdirectories with weights

    @property
    def directories(self) -> tuple[str, ...]:
        return (*self.components, "scheduler")

FAMILIES: Registry[ModelFamily] = Registry("model family")
FAMILIES.register(
    "sd",
    ModelFamily(
        "sd",
        ("StableDiffusionPipeline", "FlaxStableDiffusionPipeline", "LatentConsistencyModelPipeline"),
        ("unet", "vae", "text_encoder"),
    ),
)
FAMILIES.register(
    "sdxl",
    ModelFamily(
        "sdxl",
        ("StableDiffusionXLPipeline", "FlaxStableDiffusionXLPipeline"),
        ("unet", "vae", "text_encoder", "text_encoder_2"),
    ),
)

def detect_family(path: Path) -> ModelFamily:
    """The family a diffusers directory belongs to, from ``model_index.json`` (or its folders), with
    every component folder it needs checked."""
    index = path / "model_index.json"
    if index.is_file():
        pipeline = read_json(index).get("_class_name", "")
        matches = [f for f in FAMILIES.values() if pipeline in f.pipelines]
        if not matches:
            known = ", ".join(p for f in FAMILIES.values() for p in f.pipelines)
            raise JaxalignError(f"{index} names pipeline {pipeline!r}; jaxalign loads {known}")
        family = matches[0]
    else:
        family = FAMILIES["sdxl" if (path / "text_encoder_2").is_dir() else "sd"]
    missing = [c for c in family.directories if not (path / c).is_dir()]
    if missing:
        raise JaxalignError(f"model directory {path} lacks {', '.join(m + '/' for m in missing)} (expected diffusers layout of a {family.name!r} model)")
    return family
