"""The GPU path measured in one command: step speed, MFU, feed rate, compile warm-up, memory.

Made for a GPU machine that has PyTorch and nothing else (no Ray, no MLflow, no
network): it uses torch, ``gan/`` and synthetic 64x64 uint8 images only, and keeps
to a time budget (``--budget-s``, default 210 s) so that it ends in under 5 minutes on
an H100/H200. Without CUDA (or with ``--tiny``) it runs a tiny version in seconds,
which is what CI runs.

What it measures, at batch 64, 128 and 512 with ``g_width`` = D width = 64 and 128:

- ``plain``: pytorch/examples' dcgan/main.py iteration in eager fp32
  (benchmarks/plain_dcgan.py), fed float batches already on the device (its best case);
- the project's ``AdversarialStep`` (k=1), fed uint8 batches by the device-resident
  feed and normalising them on the device, in four variants:
  ``eager_fp32`` (no options), ``eager_fast`` (bf16 autocast, channels_last, fused
  Adam), ``compiled`` (+ torch.compile) and ``compiled_cudagraphs`` (+ CUDA graphs,
  mode reduce-overhead). Compile variants run on CUDA only.

Each variant is warmed up first (``AdversarialStep.warm_up``: compile, CUDA-graph
recording, cuDNN autotuning) and the warm-up seconds are reported apart; throughput
counts only the timed iterations after it. FLOPs per image are counted with
``torch.utils.flop_counter.FlopCounterMode`` on one eager iteration (convolutions and
matmuls, forward and backward); MFU = img/s x FLOPs per image / the device's dense bf16
peak, from a table by device name (null when the device is not in it). The feed's rate
is uint8 batches gathered on the device and normalised to float there; ``feed_ratio``
is that rate over what the best step consumes.

Prints progress, then as its last line one JSON object with ``project_img_s``,
``plain_img_s``, ``ratio`` (batch 128, g_width 128, the project's best variant vs plain),
``mfu``, ``feed_ratio`` and the detail; ``--out FILE`` writes the same JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.plain_dcgan import plain_loop  # noqa: E402
from gan.feed import DeviceImageFeed, HostImageFeed  # noqa: E402
from gan.images import normalize  # noqa: E402
from gan.models import Discriminator, Generator  # noqa: E402
from gan.adversarial import AdversarialStep, make_optimizers  # noqa: E402

RESOLUTION = 64
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets.
# First match wins: more specific names come before the names they contain.
PEAK_BF16_DENSE_TFLOPS = [
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),  # AWS's variant of the A10 with fewer tensor TFLOPs; not on NVIDIA's sheet
    ("A10", 125.0),
]


def peak_bf16_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_DENSE_TFLOPS:
        if key in name:
            return name, tflops
    return name, None


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool = False
    channels_last: bool = False
    fused_adam: bool = False
    compile: bool = False
    cuda_graphs: bool = False


def project_variants(cuda: bool) -> list[Variant]:
    eager_fp32 = Variant("eager_fp32")
    if not cuda:  # the CPU's fast options (pipelines/training/hardware.py): channels_last only
        return [eager_fp32, Variant("eager_fast", channels_last=True)]
    fast = dict(bf16=True, channels_last=True, fused_adam=True)
    return [eager_fp32, Variant("eager_fast", **fast), Variant("compiled", compile=True, **fast),
            Variant("compiled_cudagraphs", compile=True, cuda_graphs=True, **fast)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 NHWC 64x64 images (noise: pixel values do not change a step's speed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, RESOLUTION, RESOLUTION, 3), dtype=torch.uint8, generator=gen)


def build_step(width: int, variant: Variant, device: torch.device) -> AdversarialStep:
    torch.manual_seed(0)
    g = Generator(resolution=RESOLUTION, width=width).to(device)
    d = Discriminator(resolution=RESOLUTION, width=width).to(device)
    if variant.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, fused="auto" if variant.fused_adam else None)
    return AdversarialStep(
        g, d, opt_g, opt_d, discriminator_steps=1,
        autocast_dtype=torch.bfloat16 if variant.bf16 else None, channels_last=variant.channels_last,
        compile="on" if variant.compile else "off", cuda_graphs=variant.cuda_graphs,
    )


def timed_rate(run_iterations, images_per_iteration: int, chunk: int, min_seconds: float, device) -> float:
    """img/s over whole chunks of iterations until ``min_seconds`` have passed; the device
    is synchronised only between chunks, so the host keeps queueing work ahead of it."""
    iterations = 0
    synchronize(device)
    start = time.perf_counter()
    while True:
        run_iterations(chunk)
        iterations += chunk
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return iterations * images_per_iteration / elapsed


def measure_project(step: AdversarialStep, feed: DeviceImageFeed, settings) -> dict:
    stream = (b.images for b in feed.batches())
    warmup_s = step.warm_up(next(stream))  # compile / record / autotune; state restored after

    def run(n):
        for _ in range(n):
            step(stream)

    img_s = timed_rate(run, feed.batch_size, settings.chunk, settings.min_seconds, step._device)
    return {"img_s": img_s, "warmup_s": warmup_s}


def measure_plain(width: int, batch: int, device: torch.device, images: torch.Tensor, settings) -> dict:
    iteration = plain_loop(device, batch, width=width)
    # Float batches on the device before timing: the plain loop pays no input cost here.
    real = [normalize(images[i * batch:(i + 1) * batch].permute(0, 3, 1, 2).to(device)) for i in range(4)]
    start = time.perf_counter()
    for i in range(3):  # cuDNN autotuning, allocator
        iteration(real[i % 4])
    synchronize(device)
    warmup_s = time.perf_counter() - start
    counter = [0]

    def run(n):
        for _ in range(n):
            iteration(real[counter[0] % 4])
            counter[0] += 1

    return {"img_s": timed_rate(run, batch, settings.chunk, settings.min_seconds, device), "warmup_s": warmup_s}


def flops_per_image(width: int, device: torch.device) -> dict:
    """FLOPs of one eager fp32 iteration per real image, for the project's step and the plain loop."""
    batch = 4  # convolution FLOPs are linear in the batch
    images = synthetic_images(batch, seed=1)
    step = build_step(width, Variant("count"), device)
    real = images.permute(0, 3, 1, 2).to(device)
    with FlopCounterMode(display=False) as counter:
        step(iter([real]))
    project = counter.get_total_flops() / batch
    iteration = plain_loop(device, batch, width=width)
    with FlopCounterMode(display=False) as counter:
        iteration(normalize(real))
    return {"project": project, "plain": counter.get_total_flops() / batch}


def measure_feed(images: torch.Tensor, batch: int, device: torch.device, settings) -> dict:
    """img/s of uint8 batches delivered on the device and normalised there (bf16 inputs
    on CUDA are made by autocast from these floats), resident and streamed."""
    keys = list(range(images.shape[0]))
    rates = {}
    for name, feed_type in (("device", DeviceImageFeed), ("streaming", HostImageFeed)):
        feed = feed_type(images, keys, batch, seed=0, device=device)
        stream = (b.images for b in feed.batches())
        for _ in range(3):
            normalize(next(stream), channels_last=True)

        def run(n):
            for _ in range(n):
                normalize(next(stream), channels_last=True)

        rates[name] = timed_rate(run, batch, settings.chunk * 5, settings.min_seconds / 2, device)
    return {"batch": batch, "device_img_s": round(rates["device"], 1), "streaming_img_s": round(rates["streaming"], 1)}


@dataclass
class Settings:
    batches: list[int]
    widths: list[int]
    headline: tuple[int, int]  # (batch, width) of the top-level figures
    min_seconds: float
    chunk: int
    images: int
    budget_s: float


def settings_for(device: torch.device, tiny: bool, budget_s: float) -> Settings:
    if tiny:
        return Settings([16], [16], (16, 16), 0.3 if device.type == "cpu" else 0.5, 2, 64, budget_s)
    return Settings([64, 128, 512], [64, 128], (128, 128), 2.0, 20, 8192, budget_s)


def free_device_memory(device: torch.device) -> None:
    torch._dynamo.reset()  # compiled code holds its modules; each variant compiles afresh
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="compile variants are skipped once they would run past this many seconds")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tiny = args.tiny or not cuda
    settings = settings_for(device, tiny, args.budget_s)
    if cuda:
        torch.backends.cudnn.benchmark = True  # as pytorch/examples' dcgan does
    device_name, peak_tflops = peak_bf16_tflops(device)
    print(f"device {device_name}, bf16 dense peak {peak_tflops} TFLOP/s, tiny={tiny}", flush=True)

    def time_left() -> float:
        return settings.budget_s - (time.perf_counter() - t0)

    host_images = synthetic_images(settings.images)
    flops = {w: flops_per_image(w, device) for w in settings.widths}
    for w, f in flops.items():
        print(f"width {w}: {f['project'] / 1e9:.3f} GFLOP/image (project step), {f['plain'] / 1e9:.3f} (plain loop)", flush=True)

    def mfu(img_s: float, width: int) -> float | None:
        return None if peak_tflops is None else img_s * flops[width]["project"] / (peak_tflops * 1e12)

    # The headline configuration first, so that a tight budget never cuts it.
    configs = [settings.headline] + [(b, w) for w in reversed(settings.widths) for b in settings.batches
                                     if (b, w) != settings.headline]
    results = []
    compile_estimate_s = 90.0  # first guess at a compile warm-up; replaced by measured ones
    for batch, width in configs:
        count = max(settings.images // batch, 4) * batch
        images = host_images[:count] if count <= len(host_images) else synthetic_images(count)
        feed = DeviceImageFeed(images, list(range(count)), batch, seed=0, device=device)
        contenders = [Variant("plain")] + project_variants(cuda)
        for variant in contenders:
            row = {"batch": batch, "width": width, "variant": variant.name,
                   "options": asdict(variant) if variant.name != "plain" else None}
            needs = compile_estimate_s + 3 * settings.min_seconds if variant.compile else 3 * settings.min_seconds
            if time_left() < needs:
                row["skipped"] = f"time budget: {time_left():.0f} s left, about {needs:.0f} s needed"
                results.append(row)
                print(f"batch {batch} width {width} {variant.name}: skipped ({row['skipped']})", flush=True)
                continue
            free_device_memory(device)
            try:
                if variant.name == "plain":
                    measured = measure_plain(width, batch, device, images, settings)
                else:
                    measured = measure_project(build_step(width, variant, device), feed, settings)
                    if variant.compile:
                        compile_estimate_s = max(measured["warmup_s"], 10.0)
                row.update(measured)
                row["mfu"] = mfu(measured["img_s"], width) if variant.name != "plain" else (
                    None if peak_tflops is None else measured["img_s"] * flops[width]["plain"] / (peak_tflops * 1e12))
                if cuda:  # includes the resident feed's images (feed_mib)
                    row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    row["feed_mib"] = feed.nbytes / 2**20
            except Exception as error:  # one failing variant must not cost the others' numbers
                row["error"] = f"{type(error).__name__}: {str(error)[:500]}"
            results.append(row)
            shown = f"{row['img_s']:.1f} img/s, warm-up {row['warmup_s']:.1f} s" if "img_s" in row else row["error"]
            print(f"batch {batch} width {width} {variant.name}: {shown}", flush=True)
        del feed
    free_device_memory(device)

    head_batch, head_width = settings.headline
    head = [r for r in results if (r["batch"], r["width"]) == settings.headline and "img_s" in r]
    plain = next((r for r in head if r["variant"] == "plain"), None)
    best = max((r for r in head if r["variant"] != "plain"), key=lambda r: r["img_s"], default=None)
    feed = measure_feed(host_images[: max(settings.images // head_batch, 4) * head_batch], head_batch, device, settings)
    project_img_s = best["img_s"] if best else None
    plain_img_s = plain["img_s"] if plain else None
    result = {
        "project_img_s": round(project_img_s, 1) if project_img_s else None,
        "plain_img_s": round(plain_img_s, 1) if plain_img_s else None,
        "ratio": round(project_img_s / plain_img_s, 3) if project_img_s and plain_img_s else None,
        "mfu": round(best["mfu"], 4) if best and best.get("mfu") is not None else None,
        "feed_ratio": round(feed["device_img_s"] / project_img_s, 2) if project_img_s else None,
        "headline": {"batch": head_batch, "g_width": head_width, "variant": best["variant"] if best else None},
        "device": device_name,
        "peak_bf16_dense_tflops": peak_tflops,
        "tiny": tiny,
        "flops_per_image": {str(w): f for w, f in flops.items()},
        "feed": {**feed, "streaming_ratio": round(feed["streaming_img_s"] / project_img_s, 2) if project_img_s else None},
        "compile_warmup_s": {f"{r['variant']}@b{r['batch']}w{r['width']}": round(r["warmup_s"], 2)
                             for r in results if r["variant"].startswith("compiled") and "warmup_s" in r},
        "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    line = json.dumps(result)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
