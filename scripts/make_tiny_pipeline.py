"""Write a tiny random PyTorch diffusers pipeline (SD, SDXL, SD3, or the LCM and SD 3.5 layouts) to a folder,
for trying the real-model code paths without downloading weights.

    python scripts/make_tiny_pipeline.py --family sd --out /tmp/tiny-sd
    jaxalign run --config configs/sd15.py --config.model=/tmp/tiny-sd --config.height=32 --config.width=32 \\
        --config.dtype=float32 --workdir runs/tiny-sd
    python scripts/make_tiny_pipeline.py --family sd35 --out /tmp/tiny-sd35
    jaxalign run --config configs/default.py --config.model=/tmp/tiny-sd35 --workdir runs/tiny-sd35
"""

import argparse

from jaxalign.models import FAMILIES
from jaxalign.testing import TINY_VARIANTS as VARIANTS
from jaxalign.testing import tiny_pytorch_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=(*FAMILIES, *VARIANTS), default="sd", help="a model family, or a variant layout: " + ", ".join(VARIANTS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    family, options = VARIANTS.get(args.family, (args.family, {}))
    tiny_pytorch_pipeline(family, args.out, seed=args.seed, **options)
    print(f"wrote a tiny random {args.family} pipeline (PyTorch safetensors, 32x32 images) to {args.out}")


if __name__ == "__main__":
    main()
