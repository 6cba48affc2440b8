"""The baseline every benchmark compares against: pytorch/examples' dcgan/main.py iteration.

BCELoss on a sigmoid, one G forward reused for both updates, D's gradients computed
and thrown away in the G step: the straightforward loop, written out in full.
"""

from __future__ import annotations

import torch
from torch import nn

from gan.models import Discriminator, Generator


def plain_loop(device, batch, nz=100, resolution=64, width=64):
    """pytorch/examples dcgan/main.py's iteration, verbatim in spirit (``width``: its ngf = ndf)."""
    net_g = Generator(resolution=resolution, latent_dim=nz, width=width).to(device)
    net_d = Discriminator(resolution=resolution, width=width).to(device)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def iteration(real):
        real = real.to(device)
        b = real.size(0)
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        net_d.zero_grad()
        label = torch.full((b,), 1.0, device=device)
        output = torch.sigmoid(net_d(real))
        err_d_real = criterion(output, label)
        err_d_real.backward()
        noise = torch.randn(b, nz, 1, 1, device=device)
        fake = net_g(noise)
        label.fill_(0.0)
        output = torch.sigmoid(net_d(fake.detach()))
        err_d_fake = criterion(output, label)
        err_d_fake.backward()
        opt_d.step()
        # (2) Update G network: maximize log(D(G(z)))
        net_g.zero_grad()
        label.fill_(1.0)
        output = torch.sigmoid(net_d(fake))
        err_g = criterion(output, label)
        err_g.backward()
        opt_g.step()
        return err_d_real + err_d_fake, err_g

    return iteration
