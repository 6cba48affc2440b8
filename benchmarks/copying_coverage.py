"""How much of a copier the nearest-neighbour copying audit catches when it compares with a
subset of the training images, on the LSUN photos.

The audit (``gan.copying``, run by every evaluation with a held-out split) compares each
generated sample with the Inception features of a seeded subset of the training images:
``eval.reference_images``, then KID's cap of 10,000 (``gan.fid.KID_FEATURES``). A sample
copied from a training image outside that subset has only unrelated images to be near,
so it looks like an unseen photo. This measures it: the 32x32 LSUN photos are ingested
with a held-out split; a *copier* returns training photos (exact copies) drawn uniformly
from the whole training set; for reference subsets of 1/32, 1/16 ... 1/2 and all of the
training set, the audit's ``fraction_below_heldout_p1`` (the share of samples closer to
the training set than 99% of held-out photos) and its verdict.

Expected: fraction ~= coverage (subset / training images), plus ~1% by construction; the
verdict flips at coverage ~0.10 (``eval.copying_max_fraction``). At LSUN's 3M images and
the default cap the coverage is 10,000 / 2.88M = 0.35%: the audit cannot see a copier
there, which is why the report states its coverage and the hash audit (every training
image) is the one that scales.

``--tiny``: 60 photos, 8 copies: every code path, in seconds; measures nothing.
Prints progress, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pipelines.cluster.openmp  # noqa: E402,F401  (before torch loads)

import numpy as np  # noqa: E402

LSUN = Path(os.environ.get("DCGAN_LSUN_SAMPLE") or ROOT.parent / "shared" / "data" / "lsun-bedroom" / "images")
RESOLUTION = 32


def features_of(extractor, images: np.ndarray, batch: int = 50) -> np.ndarray:
    return np.concatenate([extractor(images[i:i + batch]) for i in range(0, len(images), batch)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, text in (("--photos", 2000, "LSUN photos ingested (training + held out)"),
                                ("--heldout", 300, "of them held out (by content hash)"),
                                ("--samples", 200, "the copier's samples")):
        ap.add_argument(flag, type=int, default=default, help=text)
    ap.add_argument("--tiny", action="store_true", help="60 photos, 8 copies: runs in seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        vars(args).update(photos=60, heldout=12, samples=8)
    files = sorted(LSUN.glob("*.jpg"))[: args.photos]
    if len(files) < args.photos:
        sys.exit(f"need {args.photos} JPEGs in {LSUN}, found {len(files)} (see its NOTICE.md)")
    from gan.copying import copying_audit
    from gan.inception import InceptionFeatures
    from pipelines.cluster.connect import start_local_ray
    from pipelines.dataset.ingestion import ingest
    from pipelines.dataset.rows import dataset_chunks, read_rows, split_rows

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-coverage-"))
    try:
        source = work / "photos"
        source.mkdir()
        for f in files:
            (source / f.name).symlink_to(f)
        import ray

        start_local_ray(logging_level="ERROR")
        try:
            manifest = ingest(str(source), str(work / "dataset"), RESOLUTION, holdout=args.heldout, progress=False)
        finally:
            ray.shutdown()
        uri = str(work / "dataset")
        train, held = split_rows(uri, manifest)
        chunks = dataset_chunks(uri)
        extractor = InceptionFeatures("cpu")
        print(f"Inception features of {len(train)} training and {len(held)} held-out photos", flush=True)
        train_features = features_of(extractor, read_rows(chunks, train, RESOLUTION))
        heldout_features = features_of(extractor, read_rows(chunks, held, RESOLUTION))
        rng = np.random.default_rng(0)
        copied = rng.choice(len(train), args.samples, replace=True)  # uniformly from the whole training set
        rows = []
        for share in (32, 16, 8, 4, 2, 1):
            subset = np.sort(rng.choice(len(train), len(train) // share, replace=False))
            result = copying_audit(train_features[copied], train_features[subset], heldout_features)
            coverage = len(subset) / len(train)
            in_subset = float(np.isin(copied, subset).mean())
            rows.append({"reference_images": int(len(subset)), "coverage": round(coverage, 4),
                         "copies_inside_subset": round(in_subset, 4),
                         "fraction_below_heldout_p1": round(result.report["fraction_below_heldout_p1"], 4),
                         "median_ratio": round(result.report["median_ratio"], 4), "copying": result.copying})
            print(f"reference {len(subset):>5} of {len(train)} (coverage {coverage:.3f}): copies inside "
                  f"{in_subset:.3f}, fraction below p1 {rows[-1]['fraction_below_heldout_p1']:.3f}, "
                  f"verdict {'copying' if result.copying else 'not copying'}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"training_images": int(len(train)), "heldout_images": int(len(held)), "samples": args.samples,
                      "resolution": RESOLUTION, "rows": rows, "wall_s": round(time.perf_counter() - started, 1),
                      "tiny": args.tiny}))


if __name__ == "__main__":
    main()
