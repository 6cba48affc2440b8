"""`dcgan generate`: images from a registered model or a checkpoint, in StyleGAN2-ADA's terms.

    dcgan generate --network models:/dcgan-synthetic-4096-s0-32px@champion --seeds 0-35,40 --outdir samples/
    dcgan generate --network models:/dcgan-synthetic-4096-s0-32px@champion --seeds 0-63 --trunc 1.5 --out grid.png
    dcgan generate --network models:/dcgan-synthetic-4096-s0-32px/3 -n 50000 --batch 500 --device cuda --outdir fid/
    dcgan generate --network runs/checkpoints/<run>/checkpoint_... --interpolate 3 7 --steps 10 --out walk.png

Seed s gives z = ``gan.latent_space.seeded_z([s])``: drawn from its own random generator,
seeded with s, so a seed is the same image on any machine, among any other seeds and in
any ``--batch`` (G runs in eval mode: batch norm uses its running statistics and never
mixes the images of a batch). ``-n 4 --seed 0`` is ``--seeds 0-3``. ``--outdir`` gets one
PNG per seed, ``seed0012.png``, written batch by batch as they are made, so memory stays
flat for any count; ``--out x.png`` is one grid, for counts up to :data:`GRID_MAX`.

How the latents differ from StyleGAN's: DCGAN has no mapping network, z goes straight into
G. StyleGAN's ``--trunc psi`` pulls w towards the mean w; here ``--trunc T`` truncates z
itself: every component with |z_i| > T is redrawn until inside [-T, T] (BigGAN's truncation
trick). Smaller T trades variety for typical images; without ``--trunc``, z ~ N(0, I).

``models:/`` references resolve against --tracking-uri, else $MLFLOW_TRACKING_URI, else the
embedded store under ./runs; a reference the registry lacks fails in one line naming what
it has, before anything else is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.errors import PipelineError
from pipelines.steps.entrypoint import (TRACKING_URI_HELP, Command, add_network_argument, preset_config,
                                        require_network)

PROG = "dcgan generate"
GRID_MAX = 1024  # images in one grid file; more go to a folder


def seeds_of(args) -> list[int]:
    from pipelines.steps.id_ranges import parse_ranges

    return parse_ranges(args.seeds) if args.seeds else list(range(args.seed, args.seed + args.num))


def image_name(seed: int) -> str:
    return f"seed{seed:04d}.png"  # StyleGAN2-ADA's name


def check_output(out: Path, count: int) -> bool:
    """True for one grid file, False for a folder of PNGs; refuses a grid too big to look at."""
    grid_file = out.suffix.lower() == ".png"
    if grid_file and count > GRID_MAX:
        raise PipelineError(f"{count} images are too many for one grid ({GRID_MAX} at most): "
                            f"give a folder, --outdir {out.with_suffix('')}/, for one PNG per image")
    return grid_file


def batches(z, size: int):
    for start in range(0, len(z), size):
        yield start, z[start:start + size]


def check_network(network: str, tracking_uri: str) -> None:
    """The generator reference, before anything else: a registered model the registry has,
    or a checkpoint that exists."""
    from pipelines.cluster import storage
    from pipelines.records.registry import check_model_reference
    from pipelines.records.tracking import MLFLOW_SCHEMES

    if network.startswith(MLFLOW_SCHEMES):
        check_model_reference(network, tracking_uri)
    elif not storage.exists(network):
        raise PipelineError(f"no checkpoint at {network}: give a checkpoint folder or .pt file (local or s3://), "
                            "or a registered model such as models:/<name>@champion")


def generate(args) -> int:
    tracking_uri = preset_config(args).tracking_uri()
    check_network(args.network, tracking_uri)
    seeds = seeds_of(args)
    out = Path(args.outdir or args.out)
    grid_file = not args.outdir and check_output(out, args.steps if args.interpolate else len(seeds))
    import torch

    from gan.latent_space import interpolate, seeded_z
    from pipelines.training.checkpoints import load_generator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = load_generator(args.network, device=device, tracking_uri=tracking_uri).eval()
    latent_dim = generator.latent_dim if hasattr(generator, "latent_dim") else 100
    if args.interpolate:
        a, b = seeded_z(args.interpolate, latent_dim, args.trunc)
        return write_grid(generator, interpolate(a, b, args.steps, args.method), out, args.batch, device, args.steps)
    if grid_file:
        return write_grid(generator, seeded_z(seeds, latent_dim, args.trunc), out, args.batch, device, None)
    return write_folder(generator, seeds, latent_dim, out, args, device)


def write_grid(generator, z, out: Path, batch: int, device: str, nrow: int | None) -> int:
    import torch

    from gan.images import save_grid

    with torch.no_grad():
        images = torch.cat([generator(part.to(device)).float().cpu() for _, part in batches(z, batch)])
    save_grid(images, out, nrow=nrow)
    print(f"wrote a grid of {len(images)} images to {out}")
    return 0


def write_folder(generator, seeds: list[int], latent_dim: int, out: Path, args, device: str) -> int:
    """One PNG per seed, written batch by batch: only one batch is ever in memory."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from gan.images import to_uint8
    from gan.latent_space import seeded_z

    out.mkdir(parents=True, exist_ok=True)
    batch = args.batch
    with tqdm(total=len(seeds), desc="generate", unit="img", file=sys.stderr, mininterval=1,
              disable=len(seeds) <= batch) as bar, torch.no_grad():
        for start in range(0, len(seeds), batch):
            part = seeds[start:start + batch]
            pixels = to_uint8(generator(seeded_z(part, latent_dim, args.trunc).to(device))).cpu().numpy()
            for seed, array in zip(part, pixels):
                Image.fromarray(array).save(out / image_name(seed))
            bar.update(len(part))
    print(f"wrote {len(seeds)} PNGs to {out}/")
    return 0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_network_argument(ap, "--model", "the generator: models:/<name>@<alias>, models:/<name>/<version>, runs:/..., "
                         "or a checkpoint (folder or .pt, local or s3://)")
    ap.add_argument("--seeds", help="the seeds, one image each, as StyleGAN2-ADA takes them: 0-35,40 (instead of -n/--seed)")
    ap.add_argument("-n", "--num", type=int, help="how many images: seeds --seed .. --seed+n-1 (default 64)")
    ap.add_argument("--seed", type=int, help="the first seed with -n (default 0)")
    ap.add_argument("--trunc", type=float, metavar="T",
                    help="truncate z: redraw every component with |z_i| > T until inside (T > 0; default: off, "
                         "z ~ N(0, I)). Not StyleGAN's psi: DCGAN has no mapping network, z goes straight into G")
    ap.add_argument("--outdir", help="a folder: one PNG per seed (seed0012.png), written as they are made")
    ap.add_argument("--out", help=f"a .png path: one grid (up to {GRID_MAX} images); a folder works as --outdir")
    ap.add_argument("--batch", type=int, default=256, help="images generated at a time (default 256; the images "
                    "do not depend on it)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is a GPU)")
    ap.add_argument("--interpolate", nargs=2, type=int, metavar=("SEED_A", "SEED_B"), help="walk between two seeds")
    ap.add_argument("--steps", type=int, default=8, help="images along an --interpolate walk")
    ap.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    ap.add_argument("--tracking-uri", help=TRACKING_URI_HELP + ", for models:/ and runs:/")


def check_arguments(ap: argparse.ArgumentParser, args) -> None:
    require_network(ap, args)
    if bool(args.out) == bool(args.outdir):
        ap.error("give --outdir DIR (one PNG per seed) or --out FILE.png (one grid)")
    if args.outdir and args.interpolate:
        ap.error("--interpolate makes one grid: give --out FILE.png")
    if args.seeds and (args.num is not None or args.seed is not None):
        ap.error("give either --seeds or -n/--seed, not both")
    args.num, args.seed = 64 if args.num is None else args.num, args.seed or 0
    if args.num < 1:
        ap.error("-n must be at least 1")
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    if args.trunc is not None and not args.trunc > 0:
        ap.error(f"--trunc must be > 0 (the largest |z_i| kept), got {args.trunc}; leave it out for no truncation")


COMMAND = Command(PROG, "images from a registered model or checkpoint (StyleGAN2-ADA's --network/--seeds/--outdir)",
                  add_arguments, generate, description=__doc__.split("\n\n")[0], check=check_arguments,
                  config=preset_config)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
