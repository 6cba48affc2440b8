"""AdversarialStep's speed options on the CPU: compile (through dynamo and AOT autograd,
backend aot_eager: the same wrapping, guards and graph splitting as on a GPU, without
code generation), warm-up, uint8 input, fused Adam, and what must not break: state
dicts, forward hooks, DDP. tests/test_gpu.py runs the inductor and CUDA-graph variants."""

import inspect

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gan.images import normalize
from gan.latent_space import feature_maps_dropped
from gan.models import Discriminator, Generator
from gan.adversarial import AdversarialStep, compile_enabled, make_optimizers, unwrap


def _networks(seed=0):
    torch.manual_seed(seed)
    return Generator(resolution=32, latent_dim=16, width=8), Discriminator(resolution=32, width=8)


def _step(g, d, **options):
    opt_g, opt_d = make_optimizers(g, d, lr_g=1e-3, lr_d=3e-4)
    return AdversarialStep(g, d, opt_g, opt_d, latent_dim=16, noise_generator=torch.Generator().manual_seed(1),
                           **options)


def _batches(n=3, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen) for _ in range(n)]


def _train(step, batches):
    return [step(iter([b])) for b in batches]


def _state(g, d):
    return {**{f"g.{k}": v.clone() for k, v in g.state_dict().items()},
            **{f"d.{k}": v.clone() for k, v in d.state_dict().items()}}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_step_trains_like_the_eager_step_and_keeps_bare_state_dicts():
    g1, d1 = _networks()
    g2, d2 = _networks()
    eager, compiled = _step(g1, d1), _step(g2, d2, compile="on", compile_backend="aot_eager")
    assert compiled.compiled and not eager.compiled
    batches = _batches()
    m1, m2 = _train(eager, batches), _train(compiled, batches)
    # really compiled, in one graph per call site (G update, G fakes, D update, D frozen),
    # with no graph break and no recompilation from one iteration to the next
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 4
    assert not torch._dynamo.utils.counters["graph_break"]
    s1, s2 = _state(g1, d1), _state(g2, d2)
    assert s1.keys() == s2.keys() and not any("_orig_mod" in k for k in s2)
    for key in s1:
        torch.testing.assert_close(s2[key], s1[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(m2[-1]["loss_d"], m1[-1]["loss_d"], rtol=1e-4, atol=1e-5)
    # a checkpoint of the compiled run loads into a fresh, uncompiled generator
    fresh = Generator(resolution=32, latent_dim=16, width=8)
    fresh.load_state_dict(unwrap(compiled.generator).state_dict())


def test_warm_up_leaves_training_exactly_as_without_it():
    g1, d1 = _networks()
    g2, d2 = _networks()
    plain, warmed = _step(g1, d1), _step(g2, d2)
    seconds = warmed.warm_up(_batches(1, seed=9)[0])
    assert seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(_state(g1, d1).values(), _state(g2, d2).values()))
    batches = _batches()
    _train(plain, batches), _train(warmed, batches)
    for (key, a), b in zip(_state(g1, d1).items(), _state(g2, d2).values()):
        assert torch.equal(a, b), key
    assert plain.opt_d.state_dict()["state"][0]["step"] == warmed.opt_d.state_dict()["state"][0]["step"]


def test_uint8_batches_are_normalised_on_the_device_like_float_ones():
    g1, d1 = _networks()
    g2, d2 = _networks()
    batches = _batches()
    _train(_step(g1, d1), batches)
    _train(_step(g2, d2), [normalize(b) for b in batches])
    assert all(torch.equal(a, b) for a, b in zip(_state(g1, d1).values(), _state(g2, d2).values()))


def test_hooks_on_the_uncompiled_generator_still_apply():
    g, d = _networks()
    step = _step(g, d, compile="on", compile_backend="aot_eager")
    _train(step, _batches(1))
    bare = unwrap(torch.compile(step.generator, backend="aot_eager"))  # any wrapper stripped
    assert bare is g
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    g.eval()
    with torch.no_grad():
        before = bare(z)
        with feature_maps_dropped(bare, range(8)):  # all maps of the second-highest layer
            after = bare(z)
    assert not torch.allclose(before, after)


def test_compile_setting_and_fused_adam_choices():
    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled("on", torch.device("cpu")) and not compile_enabled("off", torch.device("cuda"))
    with pytest.raises(ValueError):
        compile_enabled("yes", torch.device("cpu"))
    g, d = _networks()
    opt_g, _ = make_optimizers(g, d, fused="auto")
    assert not opt_g.defaults.get("fused")  # CPU: PyTorch's default (fused measured no faster)
    with pytest.raises(ValueError, match="CUDA"):
        _step(g, d, compile="on", cuda_graphs=True)


def test_ddp_path_with_compile_on_a_one_rank_gloo_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        g, d = _networks()
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        g_ddp, d_ddp = DistributedDataParallel(g, **no_sync), DistributedDataParallel(d, **no_sync)
        opt_g, opt_d = make_optimizers(g, d)
        step = AdversarialStep(g_ddp, d_ddp, opt_g, opt_d, latent_dim=16, compile="on", compile_backend="aot_eager")
        before = _state(g, d)
        metrics = _train(step, _batches(2))
        assert all(torch.isfinite(v).all() for m in metrics for v in m.values())
        after = _state(g, d)
        assert not torch.equal(before["g.main.project.0.weight"], after["g.main.project.0.weight"])
        assert not torch.equal(before["d.main.logit.weight"], after["d.main.logit.weight"])
        assert unwrap(step.generator) is g and set(unwrap(step.discriminator).state_dict()) == set(d.state_dict())
    finally:
        dist.destroy_process_group()
