"""Write a tiny random PyTorch diffusers pipeline (SD, SDXL or LCM layout) to a folder, for trying the
real-model code paths without downloading weights.

    python scripts/make_tiny_pipeline.py --family sd --out /tmp/tiny-sd
    jaxalign run --config configs/sd15.py --config.model=/tmp/tiny-sd --config.height=32 --config.width=32 \\
        --config.dtype=float32 --workdir runs/tiny-sd
"""

import argparse

from jaxalign.models import FAMILIES
from jaxalign.testing import tiny_pytorch_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=(*FAMILIES, "lcm"), default="sd", help="a model family, or lcm (SD's LCM-distilled layout)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variant = {"lcm": True} if args.family == "lcm" else {}
    tiny_pytorch_pipeline("sd" if variant else args.family, args.out, seed=args.seed, **variant)
    print(f"wrote a tiny random {args.family} pipeline (PyTorch safetensors, 32x32 images) to {args.out}")


if __name__ == "__main__":
    main()
