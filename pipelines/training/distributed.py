"""What DDP needs for GANs beyond ``prepare_model``: batch norm across workers.

PyTorch's ``SyncBatchNorm`` runs on GPUs only. :class:`CrossWorkerBatchNorm2d` computes
the same statistics on any backend (gloo on CPUs too) with an autograd-aware
all-reduce of per-channel sums, so ``train.sync_batchnorm`` means the same thing on
a laptop as on a GPU cluster, and a 2-worker step with batch b equals a 1-worker step
with batch 2b.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class CrossWorkerBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_tensor([x.numel() / c])])
        total = dist_nn.all_reduce(local)  # sum over workers, gradients flow back to every worker
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm with statistics over all workers: SyncBatchNorm on GPUs, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossWorkerBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


def ddp_kwargs() -> dict:
    """DDP options for GANs: no buffer broadcast in forward.

    D runs on a real and a fake batch before one backward; broadcasting batch-norm
    buffers in the second forward writes them in place and autograd rejects it (on
    GPUs). Newer PyTorch renamed ``broadcast_buffers`` to ``forward_sync_buffers``.
    """
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def replica_divergence(*modules: nn.Module) -> float:
    """Largest difference between workers' parameter checksums (0.0: replicas agree).

    DDP keeps replicas identical by construction; a nonzero value means a gradient
    escaped the all-reduce (e.g. a network updated outside its DDP wrapper).
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    params = [p.detach() for m in modules for p in m.parameters()]
    local = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params])
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return max((g - gathered[0]).abs().max().item() for g in gathered)


def first_rank_on_node(node_id: str, rank: int) -> bool:
    """Whether ``rank`` is the lowest rank on its node, a node named by ``node_id`` (Ray's
    node id: Ray Train's local rank groups workers by IP address, which several Ray nodes
    on one host share). A collective: every rank calls it."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return True
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node_id)
    return nodes.index(node_id) == rank
