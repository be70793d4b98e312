"""Train a small SimCLR encoder on repscope's built-in `shapes` images, on the CPU, logging to repscope.

Each epoch it logs the embeddings of a fixed probe set (with labels, so the linear and k-NN probes run), the
encoder itself as a checkpoint (the server embeds `shapes` with it), and the training loss. Open the run page
to watch RankMe and probe accuracy move together.

    repscope serve &                      # or point --url at your server
    python examples/train_simclr_shapes.py --epochs 10

SimCLR: Chen et al. 2020 (NT-Xent loss, temperature 0.5 here); the augmentations are random crops (by shifting),
flips and colour jitter written in plain torch so the example needs nothing beyond repscope and torch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import repscope
from worker.datasets.builtin import load_builtin

TEMPERATURE = 0.5
PROBE_SIZE = 1200


class ConvEncoder(torch.nn.Module):
    """Four conv layers, global average pool: a 128-d representation, and a projector for the loss."""

    def __init__(self, width: int = 32, dim: int = 128) -> None:
        super().__init__()
        layers, channels = [], 3
        for i, out in enumerate((width, width * 2, width * 4, dim)):
            layers += [torch.nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1),
                       torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
            channels = out
        self.backbone = torch.nn.Sequential(*layers)
        self.projector = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift-crop (pad 4, crop back), horizontal flip, brightness/contrast jitter; x in [0, 1]."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2,), generator=generator).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.8
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.8
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(a)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="repscope server")
    parser.add_argument("--project", default="examples")
    parser.add_argument("--run", default="simclr-shapes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-checkpoints", action="store_true", help="log embeddings only")
    parser.add_argument("--checkpoint-dataset", default="shapes", help="dataset the server embeds checkpoints on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = load_builtin("shapes")
    train = to_tensor(data.images[data.split == 0])
    probe_idx = np.flatnonzero(data.split == 1)[:PROBE_SIZE]
    probe, probe_labels = to_tensor(data.images[probe_idx]), data.labels[probe_idx]

    model = ConvEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    run = repscope.Client(args.url).run(project=args.project, name=args.run, config=vars(args), tags=["example"])
    print(f"logging to {args.url}/runs/{run.id}")

    def log(step: int, loss: float | None) -> None:
        model.eval()
        with torch.no_grad():
            z = torch.cat([model(chunk) for chunk in probe.split(256)])
        model.train()
        run.log_embeddings(step, z, labels=probe_labels, dataset="shapes-probe")
        if not args.no_checkpoints:
            run.log_checkpoint(step, model, dataset=args.checkpoint_dataset, suites=["spectrum"])
        if loss is not None:
            run.log_metrics(step, loss=loss)

    log(0, None)
    step = 0
    for epoch in range(1, args.epochs + 1):
        started, losses = time.perf_counter(), []
        for _ in range(args.steps_per_epoch):
            batch = train[torch.randint(0, len(train), (args.batch_size,), generator=generator)]
            a, b = model.projector(model(augment(batch, generator))), model.projector(model(augment(batch, generator)))
            loss = nt_xent(a, b)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        log(step, float(np.mean(losses)))
        print(f"epoch {epoch}: step {step}, loss {np.mean(losses):.3f} ({time.perf_counter() - started:.1f} s)")
    finished = run.wait(timeout=1800)
    failed = [e for e in finished if e.status != "succeeded"]
    rankme = run.metrics("rankme")
    print("RankMe over step:", ", ".join(f"{s}: {v:.1f}" for s, v in rankme))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
