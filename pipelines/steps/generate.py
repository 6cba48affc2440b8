"""`dcgan generate`: images from a registered model or a checkpoint.

    dcgan generate --model models:/dcgan-synthetic-32px@champion -n 64 --out samples.png
    dcgan generate --model models:/dcgan-synthetic-32px@champion --seeds 0-35,40 --out samples/   # one PNG a seed
    dcgan generate --model models:/dcgan-synthetic-32px/3 -n 50000 --batch 500 --device cuda --out fid-samples/
    dcgan generate --model runs/checkpoints/<run>/checkpoint_... --interpolate 3 7 --steps 10 --out walk.png

Image i is drawn from z = ``gan.latent_space.seeded_z([s])`` of its seed s, StyleGAN2-ADA's
convention: ``--seeds 0-3`` and ``-n 4 --seed 0`` (seeds 0, 1, 2, 3) give the same images,
on any machine and in any batch size. Images are generated ``--batch`` at a time with a
progress bar; a folder ``--out`` gets each batch's PNGs (``<seed>.png``, 6 digits) as it
goes, so memory stays flat for any count. A ``.png`` ``--out`` is one grid, for counts up
to :data:`GRID_MAX`. ``models:/`` URIs resolve against $MLFLOW_TRACKING_URI, else the
embedded store under ./runs (or --tracking-uri).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cluster import storage
from pipelines.config import PipelineConfig
from pipelines.steps.entrypoint import run_command
from pipelines.errors import PipelineError
from pipelines.steps.id_ranges import parse_ranges
from pipelines.records.tracking import MLFLOW_SCHEMES

PROG = "dcgan generate"
GRID_MAX = 1024  # images in one grid file; more go to a folder


def seeds_of(args) -> list[int]:
    return parse_ranges(args.seeds) if args.seeds else list(range(args.seed, args.seed + args.num))


def check_output(out: Path, count: int) -> bool:
    """True for one grid file, False for a folder of PNGs; refuses a grid too big to look at."""
    grid_file = out.suffix.lower() == ".png"
    if grid_file and count > GRID_MAX:
        raise PipelineError(f"{count} images are too many for one grid ({GRID_MAX} at most): "
                            f"give a folder, --out {out.with_suffix('')}/, for one PNG per image")
    return grid_file


def batches(z, size: int):
    for start in range(0, len(z), size):
        yield start, z[start:start + size]


def generate(args) -> int:
    if not args.model.startswith(MLFLOW_SCHEMES) and not storage.exists(args.model):
        raise PipelineError(f"no checkpoint at {args.model}: give a checkpoint folder or .pt file (local or s3://), "
                            "or a registered model such as models:/<name>@champion")
    seeds = seeds_of(args)
    out = Path(args.out)
    grid_file = check_output(out, args.steps if args.interpolate else len(seeds))
    import torch

    from gan.latent_space import interpolate, seeded_z
    from pipelines.training.checkpoints import load_generator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = load_generator(args.model, device=device,
                               tracking_uri=args.tracking_uri or PipelineConfig().tracking_uri())
    latent_dim = generator.latent_dim if hasattr(generator, "latent_dim") else 100
    if args.interpolate:
        a, b = seeded_z(args.interpolate, latent_dim)
        return write_grid(generator, interpolate(a, b, args.steps, args.method), out, args.batch, device, args.steps)
    if grid_file:
        return write_grid(generator, seeded_z(seeds, latent_dim), out, args.batch, device, None)
    return write_folder(generator, seeds, latent_dim, out, args.batch, device)


def write_grid(generator, z, out: Path, batch: int, device: str, nrow: int | None) -> int:
    import torch

    from gan.images import save_grid

    with torch.no_grad():
        images = torch.cat([generator(part.to(device)).float().cpu() for _, part in batches(z, batch)])
    save_grid(images, out, nrow=nrow)
    print(f"wrote a grid of {len(images)} images to {out}")
    return 0


def write_folder(generator, seeds: list[int], latent_dim: int, out: Path, batch: int, device: str) -> int:
    """One PNG per seed, written batch by batch: only one batch is ever in memory."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from gan.images import to_uint8
    from gan.latent_space import seeded_z

    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(seeds), desc="generate", unit="img", file=sys.stderr, mininterval=1,
              disable=len(seeds) <= batch) as bar, torch.no_grad():
        for start in range(0, len(seeds), batch):
            part = seeds[start:start + batch]
            pixels = to_uint8(generator(seeded_z(part, latent_dim).to(device))).cpu().numpy()
            for seed, array in zip(part, pixels):
                Image.fromarray(array).save(out / f"{seed:06d}.png")
            bar.update(len(part))
    print(f"wrote {len(seeds)} PNGs to {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..., or a checkpoint")
    ap.add_argument("-n", "--num", type=int, help="how many images: seeds --seed .. --seed+n-1 (default 64)")
    ap.add_argument("--seed", type=int, help="the first seed with -n (default 0)")
    ap.add_argument("--seeds", help="the seeds, one image each, as StyleGAN2-ADA takes them: 0-35,40 (instead of -n/--seed)")
    ap.add_argument("--out", required=True, help=f"a .png path for one grid (up to {GRID_MAX} images), "
                    "or a folder for one PNG per image, written as they are made")
    ap.add_argument("--batch", type=int, default=256, help="images generated at a time (default 256)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is a GPU)")
    ap.add_argument("--interpolate", nargs=2, type=int, metavar=("SEED_A", "SEED_B"), help="walk between two seeds")
    ap.add_argument("--steps", type=int, default=8, help="images along an --interpolate walk")
    ap.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ (default $MLFLOW_TRACKING_URI or ./runs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seeds and (args.num is not None or args.seed is not None):
        ap.error("give either --seeds or -n/--seed, not both")
    args.num, args.seed = 64 if args.num is None else args.num, args.seed or 0
    if args.num < 1:
        ap.error("-n must be at least 1")
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    return run_command(PROG, lambda: generate(args))


if __name__ == "__main__":
    raise SystemExit(main())
