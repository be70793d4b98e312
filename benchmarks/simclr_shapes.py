"""A tiny SimCLR on the built-in shapes dataset, sized for a 2-core CPU: the trained encoder of the equivariance
benchmark (benchmarks/bench_equivariance.py) and of its unit test.

Recipe (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"):
two augmented views per image — random resized crop (scale 0.25–1) + horizontal flip, colour jitter
(0.4, 0.4, 0.4; p = 0.8) and random grayscale (p = 0.2), all from worker.datasets.transforms.views — then
NT-Xent with temperature TEMPERATURE on a small MLP projector. `rotation=True` adds a uniformly random rotation
in [−180°, 180°) to every view (worker.suites.equivariance.rotate, edge-replicating padding: invisible on the
shapes' uniform backgrounds), which should make the encoder rotation-invariant (E-SSL, Dangovski et al.
ICLR 2022, discuss why such invariance can hurt). Deterministic for a given seed on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.datasets import transforms as T
from worker.suites.equivariance.transforms import rotate

CHANNELS = (32, 64, 64)  # conv widths, every conv stride 2 → 4×4 maps at 32 px, then global average pool
PROJ_DIM = 64
TEMPERATURE = 0.5  # SimCLR's CIFAR-10 value
BATCH = 128
STEPS = 300
LR = 2e-3
WEIGHT_DECAY = 1e-5
ROTATION_RANGE = 180.0


class TinyConvNet(nn.Module):
    """3×3 stride-2 conv–BN–ReLU blocks, global average pool: features [N, channels[-1]].
    Input: float NCHW in [0, 1] (centred inside by subtracting 0.5)."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.num_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - 0.5).mean(dim=(2, 3))


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent over 2B projections (rows i and i + B are the two views of image i)."""
    z = F.normalize(z, dim=1)
    b2 = z.shape[0]
    b = b2 // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(b2, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, b2), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def augment(x: torch.Tensor, seed: int, rng: np.random.Generator, rotation: bool) -> torch.Tensor:
    """Two SimCLR views per image, view-major per image: [2B, 3, H, W] → reordered to (all first, all second)."""
    v = T.views(x, 2, seed)  # rows 2i, 2i+1: the two views of image i
    v = torch.cat([v[0::2], v[1::2]])
    if rotation:
        angles = torch.from_numpy(rng.uniform(-ROTATION_RANGE, ROTATION_RANGE, v.shape[0]))
        v = rotate(v, angles)
    return v


@dataclass
class SimCLRRun:
    encoder: TinyConvNet
    losses: list[float] = field(default_factory=list)
    rotation: bool = False
    steps: int = 0
    seconds: float = 0.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The suite's encode: float NCHW in [0, 1] → backbone features (eval mode)."""
        return self.encoder(x)


def train_simclr(
    images: np.ndarray,
    *,
    rotation: bool = False,
    steps: int = STEPS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = 0,
    channels: tuple[int, ...] = CHANNELS,
) -> SimCLRRun:
    """SimCLR on uint8 N×H×W×3 images (CPU). Returns the eval-mode encoder and the loss per step."""
    import time

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = TinyConvNet(channels)
        projector = nn.Sequential(
            nn.Linear(encoder.num_features, encoder.num_features), nn.ReLU(), nn.Linear(encoder.num_features, PROJ_DIM)
        )
    params = list(encoder.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    losses = []
    encoder.train()
    projector.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(data), batch, replace=False))
        x = T.to_float(data[idx])
        v = augment(x, seed * 1_000_003 + step, rng, rotation)
        loss = nt_xent(projector(encoder(v)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    return SimCLRRun(encoder, losses, rotation, steps, time.perf_counter() - t0)
