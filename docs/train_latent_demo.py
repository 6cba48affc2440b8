"""Train the small generator behind the images in docs/latent.md and save a checkpoint.

Interim stand-in until `dcgan run` writes checkpoints itself: the same Algorithm 1
step and demo config as ``pipelines.steps.run``, on the synthetic bedrooms, ending with one
checkpoint in the format of ``pipelines.training.checkpoints``.

    python docs/train_latent_demo.py --out runs/latent-demo/checkpoint --config demo \
        name=latent-demo model.g_width=32 model.d_width=32 train.iterations=1500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gan.images import to_model_input  # noqa: E402
from gan.synthetic import synthetic_bedrooms  # noqa: E402
from gan.adversarial import AdversarialStep, DataPosition, make_optimizers  # noqa: E402
from pipelines.training.checkpoints import build_networks, save_state  # noqa: E402
from pipelines.config import load_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo machine's cores are shared)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.iterations=1500")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.train.seed)
    data = to_model_input(synthetic_bedrooms(cfg.data.synthetic_images, cfg.model.resolution, cfg.data.synthetic_seed))
    g, d = build_networks(cfg.model.model_dump())
    opt_g, opt_d = make_optimizers(g, d, cfg.train.lr_g, cfg.train.lr_d, (cfg.train.beta1, cfg.train.beta2))
    step = AdversarialStep(generator=g, discriminator=d, opt_g=opt_g, opt_d=opt_d, latent_dim=cfg.model.latent_dim,
                           discriminator_steps=cfg.train.discriminator_steps, generator_loss=cfg.train.generator_loss,
                           discriminator_loss=cfg.train.discriminator_loss, augment=cfg.train.augment,
                           hflip=cfg.train.hflip)
    b = cfg.train.batch_size
    real = DataPosition().batches(lambda epoch, start: data[torch.randperm(len(data))].split(b)[start: len(data) // b])
    start = time.time()
    for i in range(1, cfg.train.iterations + 1):
        metrics = step(real)
        if i % cfg.train.log_every == 0 or i == cfg.train.iterations:
            rate = i / (time.time() - start)
            print(f"iter {i}/{cfg.train.iterations} loss_d {metrics['loss_d']:.3f} loss_g {metrics['loss_g']:.3f} "
                  f"{rate:.2f} it/s ETA {(cfg.train.iterations - i) / rate:.0f}s", flush=True)
        if i % cfg.train.checkpoint_every == 0 or i == cfg.train.iterations:
            path = save_state(args.out, {
                "generator": g.state_dict(), "discriminator": d.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "iteration": i, "config": cfg.model_dump(),
            })
            print(f"checkpoint at iteration {i}: {path.resolve()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
