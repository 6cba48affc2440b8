"""`dcgan latent`: the DCGAN paper's latent-space experiments on a trained generator.

    dcgan latent sheet      numbered samples to pick ids from (and to draw boxes on)
    dcgan latent walk       lerp/slerp walks through z: a grid and an animated GIF
    dcgan latent arithmetic "2,7,11 - 4,9,13 + 5,6,8": concept averages added and subtracted
    dcgan latent forget     drop the feature maps that draw a marked object; before/after

A *sample id* is a seed (sample id 12 is always the image of z = randn(seed=12)), or,
with ``--z FILE`` (.npy or .pt, shape (N, latent_dim)), a row of that file. The generator
(``--network``) is a checkpoint (folder or .pt, local or s3://) or an MLflow URI such as
``models:/dcgan-bedroom-generator@champion``. The maths lives in :mod:`gan.latent_space`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pipelines.errors import PipelineError
from pipelines.steps.entrypoint import (TRACKING_URI_HELP, Command, add_network_argument, preset_config,
                                        require_network)
from pipelines.steps.id_ranges import parse_expression, parse_ranges

if TYPE_CHECKING:
    import torch

    from gan.models import Generator

# torch, numpy, PIL and gan are imported inside the functions: `dcgan latent --help` loads none of them.
PAPER_NOISE = 0.433  # gan.latent_space.PAPER_NOISE_SCALE, rounded: the paper's +-0.25 on U(-1, 1) z, on N(0, 1) z


class LatentError(PipelineError, ValueError):
    """Bad input to a latent command; the message says what to do."""


# ------------------------------------------------------------------- inputs
def parse_ids(spec: str) -> list[int]:
    """'3,17,40-43' -> [3, 17, 40, 41, 42, 43]."""
    return parse_ranges(spec, "sample id", LatentError)


class SampleZ:
    """Sample id -> z: a seed, or a row of a saved (N, latent_dim) file."""

    def __init__(self, latent_dim: int, z_file: str | None = None):
        import numpy as np
        import torch

        self.latent_dim = latent_dim
        self.table: torch.Tensor | None = None
        if z_file:
            path = Path(z_file)
            if not path.is_file():
                raise LatentError(f"--z {z_file}: no such file (a .npy or .pt of shape (N, {latent_dim}))")
            table = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
            table = torch.as_tensor(table).float().reshape(len(table), -1)
            if table.shape[1] != latent_dim:
                raise LatentError(f"--z {z_file} holds vectors of size {table.shape[1]}, but the generator takes {latent_dim}")
            self.table = table

    def __call__(self, ids: Sequence[int]) -> torch.Tensor:
        from gan import latent_space

        if self.table is None:
            return latent_space.seeded_z(ids, self.latent_dim)
        bad = [i for i in ids if i >= len(self.table)]
        if bad:
            raise LatentError(f"sample ids {bad} are past the end of --z (it has {len(self.table)} rows)")
        return self.table[list(ids)]


def load_model(uri: str, tracking_uri: str, device: str) -> Generator:
    """G from a checkpoint or MLflow; a tracking server that is down is a one-line error already."""
    from pipelines.cluster.storage import StorageError
    from pipelines.training.checkpoints import load_generator

    try:
        return load_generator(uri, device, tracking_uri)
    except (FileNotFoundError, StorageError) as e:
        raise LatentError(f"no checkpoint at {uri} ({e}): give a checkpoint folder or .pt file, "
                          "or a registered model such as models:/dcgan-synthetic-32px@champion") from None
    except ValueError as e:
        raise LatentError(str(e)) from None


# ------------------------------------------------------------------ MLflow
def use_tracking(tracking_uri: str):
    """MLflow pointed at ``tracking_uri``; a tracking server that is down is named
    before any work starts, with how to start one."""
    import mlflow

    from pipelines.records import tracking

    tracking.configure(tracking_uri)  # TrackingUnavailable (a PipelineError): one line, how to start it
    return mlflow


def log_latent_figures(files: Sequence[Path], tracking_uri: str, run: str, experiment: str, artifact_path: str) -> str:
    """Log ``files`` as artifacts of run ``run`` (an id, or 'new' for a fresh run in
    ``experiment``); returns the run id."""
    from pipelines.records import tracking

    mlflow = use_tracking(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    created = run == "new"
    if created:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else tracking.configure(tracking_uri, experiment)
        run = client.create_run(exp_id, run_name=f"latent-{artifact_path.split('/')[-1]}").info.run_id
    for f in files:
        client.log_artifact(run, str(f), artifact_path)
    if created:
        client.set_terminated(run)
    return run


# ------------------------------------------------------------------ images
def render(generator: torch.nn.Module, z: torch.Tensor, batch: int = 64) -> torch.Tensor:
    import torch

    device = next(generator.parameters()).device
    with torch.no_grad():
        return torch.cat([generator(z[i:i + batch].to(device)).float().cpu() for i in range(0, len(z), batch)])


# ---------------------------------------------------------------- commands
def cmd_sheet(args, g, sample_z: SampleZ) -> list[Path]:
    import numpy as np

    from gan.images import grid
    from gan.panels import grid_cells, label, upscaled

    ids = parse_ids(args.ids)
    images = render(g, sample_z(ids))
    nrow = args.nrow or int(np.ceil(np.sqrt(len(ids))))
    cell = (g.resolution + 2) * args.upscale
    sheet = upscaled(grid(images, nrow), args.upscale)
    for k, i in enumerate(ids):
        label(sheet, str(i), xy=((k % nrow) * cell + 2 * args.upscale + 1, (k // nrow) * cell + 2 * args.upscale), size=max(10, 3 * args.upscale))
    files = [args.out / "sheet.png"]
    sheet.save(files[0])
    singles = args.out / "samples"
    singles.mkdir(exist_ok=True)
    for i, img in zip(ids, grid_cells(images)):
        upscaled(img, args.upscale).save(singles / f"{i}.png")
    print(f"sheet of {len(ids)} samples ({args.upscale}x): {files[0]}; one PNG per sample id in {singles}/ "
          f"to draw boxes on (give \"image_size\": {g.resolution * args.upscale} in boxes.json)")
    return files


def cmd_walk(args, g, sample_z: SampleZ) -> list[Path]:
    import numpy as np
    import torch

    from gan import latent_space
    from gan.images import grid
    from gan.panels import grid_cells, upscaled

    ids = parse_ids(args.ids) if args.ids else list(range(len(sample_z.table) if sample_z.table is not None else 0))
    if len(ids) < 2:
        raise LatentError("a walk needs at least 2 keypoints: --ids 3,17,42 (seeds), or --z FILE with 2+ rows")
    if args.loop:
        ids = ids + ids[:1]
    path = latent_space.walk(sample_z(ids), args.steps, args.method)  # (segments, steps, D)
    flat = render(g, path.reshape(-1, path.shape[-1]))
    images = flat.reshape(*path.shape[:2], *flat.shape[1:])
    png, gif, znpy = args.out / "walk.png", args.out / "walk.gif", args.out / "walk-z.npy"
    upscaled(grid(images.flatten(0, 1), nrow=args.steps), args.upscale).save(png)
    # Segments share their joints; the GIF shows each joint once.
    frames = torch.cat([images[0], *[seg[1:] for seg in images[1:]]])
    frame_images = [upscaled(cell, args.upscale) for cell in grid_cells(frames)]
    frame_images[0].save(gif, save_all=True, append_images=frame_images[1:], duration=int(1000 / args.fps), loop=0)
    np.save(znpy, path.numpy())
    print(f"{args.method} walk through {ids}: {len(path)} segments x {args.steps} steps -> {png}, {gif} ({len(frames)} frames)")
    return [png, gif]


def cmd_arithmetic(args, g, sample_z: SampleZ) -> list[Path]:
    import numpy as np
    import torch
    from PIL import Image

    from gan import latent_space
    from gan.images import grid
    from gan.panels import hstack, upscaled, vstack

    terms = parse_expression(args.expression)
    groups = [(sign, sample_z(ids)) for sign, ids in terms]
    result = latent_space.arithmetic(groups)
    query = latent_space.neighbourhood(result, args.neighbours, args.noise, torch.Generator().manual_seed(args.noise_seed))
    panels = []
    for sign, z in groups:
        # a concept: its exemplars in a column, their average z below
        imgs = render(g, torch.cat([z, latent_space.concept_vector(z)[None]]))
        panels.append(upscaled(np.asarray(vstack([Image.fromarray(grid(imgs[:-1], 1)), Image.fromarray(grid(imgs[-1:], 1))])), args.upscale))
    out_imgs = render(g, query)
    # The exact result sits in the middle of its noisy neighbours (the paper's Fig. 7).
    side = int(np.ceil(np.sqrt(len(query))))
    order = list(range(1, len(query)))
    order.insert(min(len(order), (side * side) // 2), 0)
    panels.append(upscaled(grid(out_imgs[order], side), args.upscale))
    separators = ["+" if s > 0 else "-" for s, _ in terms[1:]] + ["="]
    if terms[0][0] < 0:
        panels.insert(0, Image.new("RGB", (1, 1)))
        separators.insert(0, "-")
    png = args.out / "arithmetic.png"
    hstack(panels, separators, gap=10 * args.upscale).save(png)
    np.save(args.out / "arithmetic-z.npy", query.numpy())
    (args.out / "arithmetic.json").write_text(json.dumps({
        "expression": args.expression, "terms": [{"sign": s, "ids": ids} for s, ids in terms],
        "noise": args.noise, "neighbours": args.neighbours, "z_file": args.z}, indent=2))
    print(f"{args.expression} -> {png} (result in the middle, {args.neighbours} neighbours with U(+-{args.noise}) noise)")
    return [png]


def read_marks(args, resolution: int, feature_size: int) -> tuple[list[int], torch.Tensor, dict[int, list]]:
    """(sample ids, feature-grid masks (N, h, w), pixel boxes per id in generated-image pixels)."""
    import numpy as np
    import torch
    from PIL import Image

    from gan import latent_space

    if bool(args.boxes) == bool(args.masks):
        raise LatentError("mark the object with exactly one of --boxes boxes.json or --masks FOLDER")
    boxes: dict[int, list] = {}
    if args.boxes:
        try:
            data = json.loads(Path(args.boxes).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LatentError(f"--boxes {args.boxes}: cannot read it as JSON ({e})") from None
        marks = data.get("boxes", data) if isinstance(data, dict) else None
        if not isinstance(marks, dict) or not marks:
            raise LatentError(f"--boxes {args.boxes}: expected {{\"boxes\": {{\"<sample id>\": [[x0, y0, x1, y1], ...]}}}}")
        scale = resolution / float(data.get("image_size", resolution))
        try:
            boxes = {int(k): [[float(v) * scale for v in b] for b in v] for k, v in marks.items() if k != "image_size"}
        except (TypeError, ValueError) as e:
            raise LatentError(f"--boxes {args.boxes}: keys must be sample ids and values lists of [x0, y0, x1, y1] ({e})") from None
        ids = sorted(boxes)
        try:
            masks = torch.stack([latent_space.boxes_to_mask(boxes[i], resolution, feature_size) for i in ids])
        except ValueError as e:
            raise LatentError(f"--boxes {args.boxes}: {e}") from None
    else:
        folder = Path(args.masks)
        files = sorted(folder.glob("*.png"), key=lambda p: p.stem)
        files = [f for f in files if f.stem.isdigit()]
        if not files:
            raise LatentError(f"--masks {folder}: no <sample id>.png files (white = object) found")
        ids = [int(f.stem) for f in files]
        masks = torch.stack([
            latent_space.pixel_mask_to_features(torch.from_numpy(np.asarray(Image.open(f).convert("L")) > 127), feature_size)
            for f in files])
    return ids, masks, boxes


def cmd_forget(args, g, sample_z: SampleZ) -> list[Path]:
    import torch

    from gan import latent_space
    from gan.images import grid
    from gan.panels import marked_overlay, tile, upscaled

    layer = args.layer or g.feature_layers[-1]
    probe, _ = latent_space.feature_activations(g, sample_z([0]), layer)
    ids, masks, boxes = read_marks(args, g.resolution, probe.shape[-1])
    z = sample_z(ids)
    try:
        selection = latent_space.select_feature_maps(g, z, masks, args.threshold, args.l2, layer)
    except ValueError as e:
        raise LatentError(str(e)) from None
    print(f"logistic regression on {layer} ({probe.shape[1]} maps, {selection.positives} positions inside the object, "
          f"{selection.negatives} outside, balanced accuracy {selection.accuracy:.2f}): "
          f"dropping {len(selection.maps)} maps with weight > {args.threshold}")
    render_ids = parse_ids(args.render) if args.render else [i for i in ids if boxes.get(i, True)][:16]
    render_z = sample_z(render_ids)
    before = render(g, render_z)
    with latent_space.feature_maps_dropped(g, selection.maps, layer):
        after = render(g, render_z)
    per_row = args.nrow or min(8, len(render_ids))
    # |after - before| as grey (white = a change of half the range) shows where the maps drew.
    change = ((after - before).abs().mean(1, keepdim=True) * 2).clamp(0, 1).mul(2).sub(1).expand_as(before)
    rows = []
    for i in range(0, len(render_ids), per_row):
        rows += [before[i:i + per_row], after[i:i + per_row]] + ([change[i:i + per_row]] if args.difference else [])
    png = args.out / "forget.png"
    upscaled(grid(torch.cat(rows), per_row), args.upscale).save(png)
    inside, outside = latent_space.change_inside_marks(g, z, masks, selection.maps, layer)
    marked_png = args.out / "forget-marked.png"
    tile(marked_overlay(render(g, z), boxes.get if boxes else None, masks, ids, args.upscale), per_row).save(marked_png)
    report = {**selection.as_dict(), "marked_ids": ids, "render_ids": render_ids, "mean_abs_change_inside_marks": inside,
              "mean_abs_change_outside_marks": outside, "l2": args.l2, "z_file": args.z}
    (args.out / "forget.json").write_text(json.dumps(report, indent=2))
    print(f"mean |change| of the marked images: {inside:.3f} inside the marks, {outside:.3f} outside "
          f"-> {png} (rows: before, after{', difference' if args.difference else ''}), {marked_png}, forget.json")
    return [png, marked_png]


COMMANDS = {"sheet": cmd_sheet, "walk": cmd_walk, "arithmetic": cmd_arithmetic, "forget": cmd_forget}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_network_argument(common, "--model", "the generator: a checkpoint folder/.pt (local or s3://) or "
                         "models:/<name>@<alias>, models:/<name>/<version>")
    common.add_argument("--out", type=Path, help="folder for the images (default runs/latent/<command>)")
    common.add_argument("--z", help="a .npy/.pt file of z vectors (N, latent_dim): sample ids become its rows, not seeds")
    common.add_argument("--upscale", type=int, default=1, help="nearest-neighbour zoom of the saved images (e.g. 4 for 32x32 models)")
    common.add_argument("--device", help="cpu, cuda, ... (default: cuda when there is a GPU)")
    common.add_argument("--mlflow-run", help="log the images to this MLflow run id ('new': a fresh run in --experiment)")
    common.add_argument("--experiment", help="experiment for --mlflow-run new (default: $MLFLOW_EXPERIMENT_NAME, else "
                        "the demo preset's tracking.experiment)")
    common.add_argument("--tracking-uri", help=TRACKING_URI_HELP)

    sub = ap.add_subparsers(dest="command", required=True, metavar="{sheet,walk,arithmetic,forget}")
    p = sub.add_parser("sheet", parents=[common], help="numbered samples to choose ids from")
    p.add_argument("--ids", default="0-63", help="sample ids to show, e.g. 0-63")
    p.add_argument("--nrow", type=int, help="images per row")

    p = sub.add_parser("walk", parents=[common], help="interpolate through z: grid + GIF")
    p.add_argument("--ids", help="keypoints, e.g. 3,17,42 (default with --z: all its rows)")
    p.add_argument("--steps", type=int, default=9, help="images per segment, endpoints included")
    p.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    p.add_argument("--loop", action="store_true", help="walk back to the first keypoint")
    p.add_argument("--fps", type=float, default=8.0)

    p = sub.add_parser("arithmetic", parents=[common], help="concept averages added and subtracted")
    p.add_argument("expression", help="operands are sample-id groups (three per concept in the paper): '2,7,11 - 4,9,13 + 5,6,8'")
    p.add_argument("--neighbours", type=int, default=8, help="noisy samples around the result")
    p.add_argument("--noise", type=float, default=PAPER_NOISE,
                   help=f"U(-noise, noise) added to the result for its neighbours (default {PAPER_NOISE}: the paper's "
                        "+-0.25 on U(-1, 1) z, rescaled to N(0, 1) z)")
    p.add_argument("--noise-seed", type=int, default=0)

    p = sub.add_parser("forget", parents=[common], help="drop the feature maps that draw a marked object")
    p.add_argument("--boxes", help='JSON {"image_size": 32, "boxes": {"<sample id>": [[x0, y0, x1, y1], ...]}}; '
                                   "[] marks an image without the object")
    p.add_argument("--masks", help="folder of <sample id>.png masks, white = object")
    p.add_argument("--threshold", type=float, default=0.0, help="drop maps whose (standardized) weight is above this")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty of the logistic regression")
    p.add_argument("--layer", help="feature layer (default: the second-highest conv layer)")
    p.add_argument("--render", help="sample ids to show before/after (default: the marked ones, up to 16)")
    p.add_argument("--nrow", type=int, help="images per row (default 8)")
    p.add_argument("--difference", action="store_true", help="add a row of |after - before| under each before/after pair")


def latent_command(args) -> int:
    from pipelines.records.registry import check_model_reference

    cfg = preset_config(args)  # the demo preset's tracking, --tracking-uri and $MLFLOW_EXPERIMENT_NAME applied
    tracking_uri, experiment = cfg.tracking_uri(), cfg.tracking.experiment
    check_model_reference(args.network, tracking_uri)  # a models:/ reference, before anything else
    if args.upscale < 1:
        raise LatentError(f"--upscale must be >= 1, got {args.upscale}")
    if args.mlflow_run:
        use_tracking(tracking_uri)  # a server that is down fails here, before any work
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    g = load_model(args.network, tracking_uri, device)
    args.out = args.out or Path("runs", "latent", args.command)
    args.out.mkdir(parents=True, exist_ok=True)
    files = COMMANDS[args.command](args, g, SampleZ(g.latent_dim, args.z))
    if args.mlflow_run:
        run_id = log_latent_figures(files, tracking_uri, args.mlflow_run, args.experiment or experiment,
                                    f"latent/{args.command}")
        print(f"logged {len(files)} images to MLflow run {run_id} ({tracking_uri}) under latent/{args.command}/")
    return 0


def check_arguments(ap: argparse.ArgumentParser, args) -> None:
    require_network(ap, args)
    args.prog = f"{ap.prog} {args.command}"  # errors name the subcommand: dcgan latent walk: ...


COMMAND = Command("dcgan latent", "latent walks, vector arithmetic and forgetting feature maps (the paper's section 6)",
                  add_arguments, latent_command, description=__doc__, check=check_arguments, raw_description=True,
                  config=preset_config)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
