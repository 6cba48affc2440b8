"""The main job on the embedded defaults (interim: single-process training on the
synthetic bedrooms; grows into ingest -> Ray Train -> evaluate -> register)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gan.images import save_grid
from gan.synthetic import synthetic_bedrooms, to_tensor_images
from gan.training import AdversarialStep, make_optimizers
from pipelines.checkpoints import build_networks
from pipelines.config import load_config
from pipelines.hardware import step_options


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dcgan run", description=__doc__)
    ap.add_argument("--config", default="demo")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.iterations=100")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.train.seed)
    out = Path(cfg.storage, cfg.name + time.strftime("-%Y%m%d-%H%M%S"))
    data = to_tensor_images(synthetic_bedrooms(cfg.data.synthetic_images, cfg.model.resolution, cfg.data.synthetic_seed))
    g, d = build_networks(cfg.model.model_dump())
    opts = step_options(torch.device("cpu"), cfg.train.mixed_precision, cfg.train.channels_last)
    if opts["channels_last"]:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, cfg.train.lr_g, cfg.train.lr_d, (cfg.train.beta1, cfg.train.beta2))
    step = AdversarialStep(g, d, opt_g, opt_d, cfg.model.latent_dim, cfg.train.discriminator_steps,
                           cfg.train.generator_loss, opts["autocast_dtype"], opts["channels_last"])
    fixed = torch.randn(64, cfg.model.latent_dim, 1, 1, generator=torch.Generator().manual_seed(1234))
    b = cfg.train.batch_size

    def batches():
        while True:
            perm = torch.randperm(len(data))
            for i in range(0, len(data) - b + 1, b):
                yield data[perm[i:i + b]]

    it = batches()
    start = time.time()
    for i in range(1, cfg.train.iterations + 1):
        m = step(it)
        if i % cfg.train.log_every == 0 or i == cfg.train.iterations:
            rate = i * b * cfg.train.discriminator_steps / (time.time() - start)
            eta = (cfg.train.iterations - i) * (time.time() - start) / i
            print(f"iter {i}/{cfg.train.iterations} loss_d {m['loss_d']:.3f} loss_g {m['loss_g']:.3f} "
                  f"D(x) {m['d_real']:.2f} D(G(z)) {m['d_fake']:.2f}/{m['d_fake_g']:.2f} {rate:.0f} img/s ETA {eta:.0f}s",
                  flush=True)
        if i % cfg.train.checkpoint_every == 0 or i == cfg.train.iterations:
            g.eval()
            with torch.no_grad():
                path = save_grid(g(fixed), out / "samples" / f"iter-{i:06d}.png", nrow=8)
            g.train()
    print(f"samples: {path.parent.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
