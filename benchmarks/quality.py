"""Quality on real bedrooms: the project's default recipe vs the DCGAN paper's, at equal iterations, over seeds.

The recipes come from the project's config: ``default`` is the embedded defaults'
(``pipelines.config.PipelineConfig()``), ``paper`` the paper preset's (``--recipes`` takes
others: ``name=preset-or-yaml``); a recipe is the keys in RECIPE_KEYS. Resolution, widths,
batch size and iterations are this benchmark's, the same for every recipe. Each recipe trains
once per seed (``--seeds``: initial weights, every iteration's noise and augmentation, data
order) on the shared LSUN photos (../shared/data/lsun-bedroom/images or $DCGAN_LSUN_SAMPLE),
decoded, cropped and resized with PIL as ingest does, part held out by content hash
(gan/splits.py; the same split for all runs). No Ray, but networks, optimizers, step,
per-iteration noise seed, data order (gan.feed) and running average as
pipelines/training/loop.py builds them; the generator evaluated is the one the pipeline
evaluates and registers (the running average when ``train.ema_decay`` > 0, else G), in eval
mode, on the same latent vectors for every recipe. Per run: held-out FID and KID at 1/3, 2/3
and the end; at the end precision/recall and density/coverage (k=3), train-FID, the copying
audit (gan/copying.py); seconds of training and evaluation. Reference features of held-out
and training photos are computed once for all runs.

Prints a line per log window (img/s, ETA) and per evaluation, then one JSON line:
heldout_fid_<recipe> (mean over seeds at the end), ratio_default_to_paper,
default_better_every_seed, per_seed, recipes, ... One 8x8 grid per recipe (first seed, end,
the same z) goes to ``--out`` as quality-<recipe>.png; ``--docs`` copies them to docs/images/.

Time on 2 free cores (32x32, width 64, batch 64): training at ~300-540 img/s (75-110 while
other jobs hold the cores): 1,500 iterations in ~3-5 min a run; Inception at ~10-20 img/s:
~13-25 s an evaluation point of 250 samples. ``--iterations 1500 --samples 250 --seeds 0,1``
(4 runs, 12 evaluation points, 8,000 photos to decode): ~16-26 min. ``--tiny``: ~30 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gan import fid  # noqa: E402
from gan.adversarial import AdversarialStep, DataPosition, make_optimizers  # noqa: E402
from gan.copying import copying_audit, pairs_grid  # noqa: E402
from gan.ema import GeneratorEMA  # noqa: E402
from gan.feed import DeviceImageFeed  # noqa: E402
from gan.images import save_grid, to_uint8  # noqa: E402
from gan.quality_metrics import manifold_metrics  # noqa: E402
from gan.splits import Holdout  # noqa: E402
from pipelines.config import PipelineConfig, load_config, nest_dotted  # noqa: E402
from pipelines.training.checkpoints import build_networks  # noqa: E402
from pipelines.training.hardware import step_options  # noqa: E402
from pipelines.training.loop import FIXED_NOISE_SEED, SAMPLE_GRID_SIZE, iteration_seed  # noqa: E402

LSUN_ENV = "DCGAN_LSUN_SAMPLE"
LSUN_DIR = ROOT.parent / "shared" / "data" / "lsun-bedroom" / "images"
RECIPE_KEYS = ("model.d_norm", "train.discriminator_loss", "train.generator_loss", "train.augment", "train.hflip",
               "train.lr_g", "train.lr_d", "train.beta1", "train.beta2", "train.discriminator_steps",
               "train.ema_decay", "train.ema_rampup")
TINY = {"limit": 300, "iterations": 12, "samples": 16, "seeds": "0", "batch": 32, "log_every": 4,
        "out": "runs/quality-tiny"}
EVAL_NOISE_SEED = 2  # the evaluations' z: seeded by (run seed + this), the same for every recipe
REFERENCE_SEED = 0  # which photos are the references: the same for every run
MEANS = ("heldout_fid", "heldout_kid", "precision", "recall", "train_fid", "copying_fraction", "copying_median_ratio")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_recipes(spec: str) -> dict[str, dict]:
    """``default,paper`` or ``name=preset-or-yaml,...``: ``default`` is the embedded defaults,
    any other name a preset (pipelines/presets/<name>.yaml) or a YAML path."""
    recipes = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, source = item.partition("=")
        source = source or name
        flat = (PipelineConfig() if source == "default" else load_config(source)).flat()
        recipes[name] = {key: flat[key] for key in RECIPE_KEYS}
    return recipes


def run_config(recipe: dict, args: argparse.Namespace, seed: int) -> PipelineConfig:
    """A pipeline config for one run: the recipe's keys, the benchmark's size (the same for all)."""
    size = {"model.resolution": args.resolution, "model.g_width": args.width, "model.d_width": args.width,
            "train.batch_size": args.batch, "train.iterations": args.iterations, "train.seed": seed}
    return PipelineConfig.model_validate(nest_dotted({**recipe, **size}))


@dataclass
class Photos:
    train: np.ndarray  # uint8 (N, R, R, 3)
    train_keys: list[str]  # content hashes: gan.feed's order is a function of them and the seed
    heldout: np.ndarray


def load_photos(folder: Path, resolution: int, limit: int | None) -> tuple[np.ndarray, list[str]]:
    """Every JPEG -> uint8 (N, R, R, 3) centre square, antialiased resize (ingest's recipe), and pixel hashes."""
    images, hashes, seen = [], [], set()
    for path in sorted(folder.glob("*.jpg"))[:limit]:
        try:
            with Image.open(path) as im:
                side = min(im.size)
                left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
                square = im.convert("RGB").crop((left, top, left + side, top + side))
                arr = np.asarray(square.resize((resolution, resolution), Image.LANCZOS), np.uint8)
        except OSError:
            continue
        digest = hashlib.sha256(arr.tobytes()).hexdigest()  # pipelines' pixel_sha256
        if digest in seen:  # ingest drops exact duplicates
            continue
        seen.add(digest)
        images.append(arr)
        hashes.append(digest)
    if not images:
        raise SystemExit(f"no JPEG photos in {folder}: set --data or ${LSUN_ENV} to a folder of LSUN bedroom JPEGs")
    return np.stack(images), hashes


def split_photos(args: argparse.Namespace) -> Photos:
    photos, hashes = load_photos(Path(args.data), args.resolution, args.limit)
    held = Holdout.resolve(args.holdout).mask(hashes)
    keys = [h for h, out in zip(hashes, held) if not out]
    return Photos(photos[~held], keys, photos[held])


@dataclass
class References:
    """Inception features of real photos, computed once for every run."""
    extractor: fid.InceptionFeatures
    heldout_feats: np.ndarray
    train_feats: np.ndarray
    heldout: fid.FrechetReference
    train: fid.FrechetReference
    train_images: np.ndarray  # the training photos behind train_feats (the closest-pairs grid)


def features_of(extractor: fid.InceptionFeatures, images, batch: int = 50) -> np.ndarray:
    return np.concatenate([extractor(images[i:i + batch]) for i in range(0, len(images), batch)])


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return fid.mu_sigma(fid.FeatureStats.of(features))


def references(photos: Photos, samples: int) -> References:
    extractor = fid.InceptionFeatures()
    rng = np.random.default_rng(REFERENCE_SEED)
    held = photos.heldout[rng.choice(len(photos.heldout), min(samples, len(photos.heldout)), replace=False)]
    train = photos.train[rng.choice(len(photos.train), min(samples, len(photos.train)), replace=False)]
    held_feats, train_feats = features_of(extractor, held), features_of(extractor, train)
    return References(extractor, held_feats, train_feats, fid.FrechetReference(*moments(held_feats)),
                      fid.FrechetReference(*moments(train_feats)), train)


@dataclass
class Run:
    name: str
    seed: int
    cfg: PipelineConfig
    step: AdversarialStep
    ema: GeneratorEMA | None

    @property
    def evaluated(self) -> torch.nn.Module:
        """What the pipeline evaluates and registers: the running average when on, else G."""
        return self.ema.module if self.ema is not None else self.step.generator


def build_run(name: str, recipe: dict, args: argparse.Namespace, seed: int) -> Run:
    """G, D, Adam and Algorithm 1's step as pipelines/training/loop.py builds them (one CPU worker)."""
    cfg = run_config(recipe, args, seed)
    opts = step_options(torch.device("cpu"), cfg.train.mixed_precision, cfg.train.channels_last)
    torch.manual_seed(seed)
    g, d = build_networks(cfg.model.model_dump())
    if opts["channels_last"]:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, cfg.train.lr_g, cfg.train.lr_d, (cfg.train.beta1, cfg.train.beta2),
                                   fused=opts["fused_adam"])
    step = AdversarialStep(generator=g, discriminator=d, opt_g=opt_g, opt_d=opt_d, latent_dim=cfg.model.latent_dim,
                           discriminator_steps=cfg.train.discriminator_steps, generator_loss=cfg.train.generator_loss,
                           discriminator_loss=cfg.train.discriminator_loss, augment=cfg.train.augment,
                           hflip=cfg.train.hflip, autocast_dtype=opts["autocast_dtype"],
                           channels_last=opts["channels_last"], noise_generator=torch.Generator())
    ema = GeneratorEMA(g, cfg.train.ema_decay, cfg.train.ema_rampup) if cfg.train.ema_decay else None
    return Run(name, seed, cfg, step, ema)


@torch.no_grad()
def generate(g: torch.nn.Module, z: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """G(z) in eval mode (batch-norm running statistics); G's mode is put back after."""
    was_training = g.training
    images = torch.cat([g.eval()(z[i:i + batch]) for i in range(0, len(z), batch)])
    g.train(was_training)
    return images


def evaluate(run: Run, refs: References, z: torch.Tensor, final: bool) -> tuple[dict, tuple | None]:
    """Held-out FID and KID; at the end also train-FID, precision/recall, density/coverage, copying."""
    images = generate(run.evaluated, z)
    feats = features_of(refs.extractor, images)
    kid, kid_std = fid.kernel_inception_distance(feats, refs.heldout_feats, subsets=100, subset_size=1000)
    scores = {"heldout_fid": round(refs.heldout.distance(*moments(feats)), 3),
              "heldout_kid": round(kid, 5), "heldout_kid_std": round(kid_std, 5)}
    if not final:
        return scores, None
    copying = copying_audit(feats, refs.train_feats, refs.heldout_feats)
    scores.update({"train_fid": round(refs.train.distance(*moments(feats)), 3),
                   **{k: round(v, 4) for k, v in manifold_metrics(refs.heldout_feats, feats).as_metrics().items()},
                   "copying": copying.copying,
                   "copying_fraction": round(copying.report["fraction_below_heldout_p1"], 4),
                   "copying_median_ratio": round(copying.report["median_ratio"], 4),
                   "copying_mann_whitney_z": round(copying.report["mann_whitney_z"], 3)})
    return scores, (images, copying)


def eval_points(iterations: int) -> list[int]:
    return sorted({max(1, round(iterations * i / 3)) for i in (1, 2, 3)})


class Clock:
    """Work left and seconds spent, by kind ("train": iterations, "eval": evaluations), for the ETA."""

    def __init__(self, **left: int):
        self.left, self.done, self.seconds = dict(left), dict.fromkeys(left, 0), dict.fromkeys(left, 0.0)

    def tick(self, kind: str, count: int, seconds: float) -> None:
        self.left[kind], self.done[kind], self.seconds[kind] = (self.left[kind] - count, self.done[kind] + count,
                                                                self.seconds[kind] + seconds)

    def eta(self) -> float:
        return sum(self.left[k] * self.seconds[k] / self.done[k] for k in self.left if self.done[k])


def report_window(run: Run, it: int, metrics: dict, window: int, seconds: float, clock: Clock) -> None:
    clock.tick("train", window, seconds)
    rate = window * run.cfg.train.batch_size * run.cfg.train.discriminator_steps / max(seconds, 1e-9)
    m = {k: v.item() for k, v in metrics.items()}
    log(f"{run.name} seed {run.seed}: iter {it}/{run.cfg.train.iterations} loss_d {m['loss_d']:.3f} "
        f"loss_g {m['loss_g']:.3f} D(x) {m['d_real']:.2f} D(G(z)) {m['d_fake']:.2f} {rate:.0f} img/s, "
        f"ETA {clock.eta():.0f}s")


def train_and_evaluate(run: Run, photos: Photos, refs: References, z: torch.Tensor,
                       args: argparse.Namespace, clock: Clock) -> tuple[dict, tuple]:
    """Train ``run`` for --iterations, evaluating at :func:`eval_points`; its per-seed results."""
    feed = DeviceImageFeed(photos.train, photos.train_keys, args.batch, run.seed)  # the loop's data order
    batches = DataPosition().batches(feed.epoch_batches)
    total, points = args.iterations, eval_points(args.iterations)
    result: dict = {"heldout_fid_at": {}, "heldout_kid_at": {}}
    final, eval_s, window = None, 0.0, 0
    t_run = t_window = time.perf_counter()
    for it in range(1, total + 1):
        run.step.noise_generator.manual_seed(iteration_seed(run.seed, 0, it))  # the loop's: (seed, rank, it)
        metrics = run.step(batches)
        if run.ema is not None:
            run.ema.update(run.step.generator)
        window += 1
        if it % args.log_every == 0 or it == total:
            report_window(run, it, metrics, window, time.perf_counter() - t_window, clock)
            window, t_window = 0, time.perf_counter()
        if it in points:
            t_eval = time.perf_counter()
            scores, final = evaluate(run, refs, z, it == total)
            seconds = time.perf_counter() - t_eval
            clock.tick("eval", 1, seconds)
            eval_s, t_window = eval_s + seconds, t_window + seconds  # img/s and train_s count training only
            result["heldout_fid_at"][str(it)], result["heldout_kid_at"][str(it)] = (scores["heldout_fid"],
                                                                                   scores["heldout_kid"])
            result.update(scores)
            log(f"{run.name} seed {run.seed}: iter {it} " + ", ".join(f"{k} {v}" for k, v in scores.items())
                + f" ({seconds:.0f} s)")
    train_s = time.perf_counter() - t_run - eval_s
    result.update(train_s=round(train_s, 1), eval_s=round(eval_s, 1),
                  img_s=round(total * args.batch * run.cfg.train.discriminator_steps / train_s, 1))
    return result, final


def save_grids(run: Run, final: tuple, refs: References, out: Path) -> list[Path]:
    """quality-<recipe>.png: the evaluated G on the loop's fixed grid noise (the same for every
    recipe); closest-<recipe>.png: the samples nearest a training photo, beside it."""
    z = torch.randn(SAMPLE_GRID_SIZE, run.cfg.model.latent_dim, 1, 1,
                    generator=torch.Generator().manual_seed(FIXED_NOISE_SEED))
    grid = save_grid(generate(run.evaluated, z), out / f"quality-{run.name}.png", nrow=8)
    images, copying = final
    pairs = copying.pairs[:16]
    closest = out / f"closest-{run.name}.png"
    Image.fromarray(pairs_grid(to_uint8(images[[s for s, _ in pairs]]),
                               refs.train_images[[t for _, t in pairs]])).save(closest)
    return [grid, closest]


def compare(recipes: dict, seeds: list[int], photos: Photos, refs: References, args, out: Path) -> tuple[dict, list]:
    """Every recipe once per seed (seed by seed, so a first comparison comes early); per-seed results, grids."""
    runs = len(recipes) * len(seeds)
    clock = Clock(train=runs * args.iterations, eval=runs * len(eval_points(args.iterations)))
    per_seed, grids, generators = {name: {} for name in recipes}, [], {}
    for seed in seeds:
        z = torch.randn(args.samples, PipelineConfig().model.latent_dim, 1, 1,
                        generator=torch.Generator().manual_seed(seed + EVAL_NOISE_SEED))
        for name, recipe in recipes.items():
            run = build_run(name, recipe, args, seed)
            per_seed[name][str(seed)], final = train_and_evaluate(run, photos, refs, z, args, clock)
            generators[f"{name}-seed{seed}"] = run.evaluated.state_dict()
            if seed == seeds[0]:
                grids += save_grids(run, final, refs, out)
    torch.save(generators, out / "generators.pt")  # so a later analysis needs no retraining
    return per_seed, grids


def summary(recipes: dict, per_seed: dict) -> dict:
    """Means over seeds for every recipe, and default vs paper."""
    result = {f"{key}_{name}": round(float(np.mean([r[key] for r in per_seed[name].values()])), 5)
              for name in recipes for key in MEANS}
    result.update(dict.fromkeys(("ratio_default_to_paper", "default_better_every_seed", "recipe_differences")))
    if "default" in recipes and "paper" in recipes:
        default, paper = per_seed["default"], per_seed["paper"]
        result.update(ratio_default_to_paper=round(result["heldout_fid_default"] / result["heldout_fid_paper"], 4),
                      default_better_every_seed=all(default[s]["heldout_fid"] < paper[s]["heldout_fid"]
                                                    for s in default),
                      recipe_differences=[k for k in RECIPE_KEYS if recipes["default"][k] != recipes["paper"][k]])
    return result


def copy_to_docs(grids: list[Path]) -> list[str]:
    return [str(Path(shutil.copyfile(p, ROOT / "docs" / "images" / p.name)).relative_to(ROOT))
            for p in grids if p.name.startswith("quality-")]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="default,paper",
                    help="comma list of NAME or NAME=preset-or-yaml ('default': the embedded defaults)")
    ap.add_argument("--seeds", default="0,1", help="comma list: each recipe trains once per seed")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--resolution", type=int, choices=(32, 64, 128), default=32)
    ap.add_argument("--width", type=int, default=64, help="G's and D's width (model.g_width, model.d_width)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=250, help="generated and real images per metric")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of photos held out by content hash")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ap.add_argument("--log-every", type=int, default=100, help="iterations between progress lines")
    ap.add_argument("--data", default=os.environ.get(LSUN_ENV) or str(LSUN_DIR), help="folder of LSUN bedroom JPEGs")
    ap.add_argument("--out", default="runs/quality", help="folder for the grids and the generators")
    ap.add_argument("--docs", action="store_true", help="copy the recipes' grids to docs/images/quality-<recipe>.png")
    ap.add_argument("--tiny", action="store_true", help="a check in seconds, nothing into docs/: " + ", ".join(
        f"{k} {v}" for k, v in TINY.items() if k != "out") + " (flags given still win)")
    args = ap.parse_args(argv)
    if args.tiny and args.docs:
        ap.error("--docs with --tiny: images from a tiny run do not belong in docs/")
    if args.tiny:
        ap.set_defaults(**TINY)
        args = ap.parse_args(argv)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    recipes, seeds = load_recipes(args.recipes), [int(s) for s in args.seeds.split(",") if s.strip()]
    for name, recipe in recipes.items():
        log(f"recipe {name}: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = split_photos(args)
    log(f"{len(photos.train) + len(photos.heldout)} photos at {args.resolution}px: {len(photos.train)} training, "
        f"{len(photos.heldout)} held out ({time.perf_counter() - start:.0f} s)")
    t_refs = time.perf_counter()
    refs = references(photos, args.samples)
    reference_s = time.perf_counter() - t_refs
    log(f"reference features: {len(refs.heldout_feats)} held-out, {len(refs.train_feats)} training "
        f"({reference_s:.0f} s)")
    per_seed, grids = compare(recipes, seeds, photos, refs, args, out)
    real_fid = refs.train.distance(*moments(refs.heldout_feats))
    result = {**summary(recipes, per_seed), "iterations": args.iterations, "resolution": args.resolution,
              "width": args.width, "batch": args.batch, "samples": args.samples, "seeds": seeds, "recipes": recipes,
              "per_seed": per_seed, "real_heldout_vs_train_fid": round(real_fid, 3),
              "photos": {"training": len(photos.train), "heldout": len(photos.heldout), "holdout": args.holdout},
              "reference_s": round(reference_s, 1), "wall_s": round(time.perf_counter() - start, 1),
              "grids": [str(p) for p in grids], "docs": copy_to_docs(grids) if args.docs else [],
              "tiny": args.tiny, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
