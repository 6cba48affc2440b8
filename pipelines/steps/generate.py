"""`dcgan generate`: images from a registered model or a checkpoint.

    dcgan generate --model models:/dcgan-synthetic-32px@champion -n 64 --out samples.png
    dcgan generate --model models:/dcgan-synthetic-32px/3 -n 16 --out samples/      # one PNG each
    dcgan generate --model runs/checkpoints/<run>/checkpoint_... --interpolate 3 7 --steps 10 --out walk.png

z for image i of seed s is ``gan.latent_space.seeded_z`` of s + i, so the same seed gives
the same images on any machine. ``models:/`` URIs resolve against $MLFLOW_TRACKING_URI,
else the embedded store under ./runs (or --tracking-uri).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines import storage
from pipelines.config import PipelineConfig
from pipelines.entrypoint import run_command
from pipelines.errors import PipelineError
from pipelines.tracking import MLFLOW_SCHEMES

PROG = "dcgan generate"


def generate(args) -> int:
    if not args.model.startswith(MLFLOW_SCHEMES) and not storage.exists(args.model):
        raise PipelineError(f"no checkpoint at {args.model}: give a checkpoint folder or .pt file (local or s3://), "
                            "or a registered model such as models:/<name>@champion")
    import torch
    from PIL import Image

    from gan.images import save_grid, to_uint8
    from gan.latent_space import interpolate, seeded_z
    from pipelines.checkpoints import load_generator

    generator = load_generator(args.model, tracking_uri=args.tracking_uri or PipelineConfig().tracking_uri())
    latent_dim = generator.latent_dim if hasattr(generator, "latent_dim") else 100
    if args.interpolate:
        a, b = seeded_z(args.interpolate, latent_dim)
        z = interpolate(a, b, args.steps, args.method)
    else:
        z = seeded_z(range(args.seed, args.seed + args.num), latent_dim)
    with torch.no_grad():
        images = generator(z)

    out = Path(args.out)
    if out.suffix.lower() == ".png":
        save_grid(images, out, nrow=args.steps if args.interpolate else None)
        print(f"wrote a grid of {len(images)} images to {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(to_uint8(images).cpu().numpy()):
            Image.fromarray(array).save(out / f"{args.seed + i:06d}.png")
        print(f"wrote {len(images)} PNGs to {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..., or a checkpoint")
    ap.add_argument("-n", "--num", type=int, default=64, help="how many images")
    ap.add_argument("--out", required=True, help="a .png path for one grid, or a folder for one PNG per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interpolate", nargs=2, type=int, metavar=("SEED_A", "SEED_B"), help="walk between two seeds")
    ap.add_argument("--steps", type=int, default=8, help="images along an --interpolate walk")
    ap.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ (default $MLFLOW_TRACKING_URI or ./runs)")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error("-n must be at least 1")
    return run_command(PROG, lambda: generate(args))


if __name__ == "__main__":
    raise SystemExit(main())
