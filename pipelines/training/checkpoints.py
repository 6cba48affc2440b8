"""Checkpoint format and loading a generator from anywhere a user may point at.

A checkpoint is a folder holding ``checkpoint.pt``: G, D, both optimizers, the
iteration and epoch counters, the fixed noise of the sample grids, the RNG states
and the run's config (so a generator can be rebuilt without the original YAML).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from gan.models import Discriminator, Generator
from pipelines.cluster import storage
from pipelines.records import tracking
from pipelines.records.tracking import MLFLOW_SCHEMES

CHECKPOINT_FILE = "checkpoint.pt"


def build_networks(model_cfg: dict[str, Any]) -> tuple[Generator, Discriminator]:
    g = Generator(resolution=model_cfg["resolution"], latent_dim=model_cfg["latent_dim"], width=model_cfg["g_width"])
    d = Discriminator(resolution=model_cfg["resolution"], width=model_cfg["d_width"],
                      norm=model_cfg.get("d_norm", "batch"))  # (configs from before model.d_norm: the paper's)
    return g, d


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_state(location: str | Path) -> dict[str, Any]:
    """A checkpoint folder or file, local or s3://; or a run's folder of checkpoints (its newest complete one)."""
    location = str(location)
    if not location.endswith(".pt"):
        location = newest_checkpoint_file(location)
    data = storage.read_bytes(location)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def newest_checkpoint_file(folder: str) -> str:
    """``folder``/checkpoint.pt; or, for a run's folder, that of its newest ``checkpoint_<time>``
    subfolder that holds one. checkpoint.pt is written whole or not at all (a local rename,
    an S3 PUT), so a folder left by a failed upload is never picked."""
    direct = storage.join(folder, CHECKPOINT_FILE)
    if storage.exists(direct):
        return direct
    found = [f for f in storage.list_files(folder, "/" + CHECKPOINT_FILE)
             if f.rsplit("/", 2)[-2].startswith("checkpoint_")]
    return max(found, key=lambda f: f.rsplit("/", 2)[-2]) if found else direct


def generator_from_state(state: dict[str, Any], ema: bool = True) -> Generator:
    """G from a checkpoint: its running average (``train.ema_decay``) when the run kept one
    and ``ema``, else the trained weights themselves (the paper's plain G)."""
    g, _ = build_networks(state["config"]["model"])
    g.load_state_dict(state["generator_ema"]["module"] if ema and state.get("generator_ema") else state["generator"])
    return g.eval()



def as_generator(model: torch.nn.Module, source: str = "the model") -> Generator:
    """A :class:`Generator` with named blocks to hook, from any module holding its weights.

    MLflow's ``pt2`` format loads as a traced graph whose blocks cannot be hooked; its
    weights keep their names, so the generator is rebuilt from them (the shapes give
    resolution, latent size and width)."""
    if isinstance(model, Generator):
        return model.eval()
    state = model.state_dict()
    ups = [k for k in state if re.fullmatch(r"main\.up\d+\.0\.weight", k)]
    try:
        latent_dim = state["main.project.0.weight"].shape[0]
        width, channels = state["main.to_rgb.0.weight"].shape[:2]
    except KeyError:
        raise ValueError(f"{source} is not a DCGAN generator of this project (no main.project / main.to_rgb "
                         f"weights; it has {list(state)[:4]}...): give a generator checkpoint or registered model") from None
    g = Generator(resolution=4 * 2 ** (len(ups) + 1), latent_dim=latent_dim, width=width, channels=channels)
    g.load_state_dict(state)
    return g.eval()


def load_generator(uri: str, device: str | torch.device = "cpu", tracking_uri: str | None = None) -> Generator:
    """G in eval mode from ``models:/name@alias``, ``models:/name/3``, ``runs:/id/path``
    (resolved against ``tracking_uri`` when given, after checking that it answers), or a
    checkpoint (folder or .pt file, local or s3://)."""
    if uri.startswith(MLFLOW_SCHEMES):
        import mlflow.pytorch

        if tracking_uri:
            tracking.configure(tracking_uri)
        model = mlflow.pytorch.load_model(uri, map_location=torch.device(device))
        return as_generator(model, uri).to(device)
    return generator_from_state(load_state(uri)).to(device)


def checkpoint_uri(result) -> str:
    """The URI of a Ray Train Result's last checkpoint (``s3://`` kept as such)."""
    import pyarrow.fs as pafs

    path = result.checkpoint.path
    return storage.as_uri(path, storage.S3_SCHEME) if isinstance(result.checkpoint.filesystem, pafs.S3FileSystem) else path
