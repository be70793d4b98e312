"""Fixtures of the backdoor suite: a tiny SimCLR ConvNet trained on generated images (the clean encoder) and
BadEncoder-style backdoored copies of it, one per trigger. Used by tests/unit/test_backdoor.py and
benchmarks/bench_backdoor.py; trained on the CPU in tens of seconds (one thread) and cached on disk.

Clean encoder (Chen et al., SimCLR, ICML 2020): TinyConvNet (4 conv layers, 16→32→64→64 channels, strides
1/2/2/2, global average pool, 64-d backbone features; 2-layer projector to 32-d) trained with NT-Xent
(τ = 0.2) on the built-in `shapes` images at 32 px (6 classes × 400 generated images, the train split) under
random resized crop (area 0.35–1) with horizontal flip, colour jitter (brightness/contrast/saturation ±0.4,
p = 0.8), a random RGB channel permutation and random grayscale (p = 0.2); Adam lr 2e-3 with a cosine
schedule, SIMCLR_STEPS steps of SIMCLR_BATCH pairs.

Why `shapes` and not `digits`: on the sparse, black-background digits a clean tiny encoder is collapsed by a
stamp covering ≈ 5 % of the image (DECREE's PL1 ≈ 0.05, the same as a backdoored copy's), so DECREE's premise
(a clean encoder needs a large mask) does not hold there; on full-frame shapes the clean encoder needs
PL1 ≈ 0.3. The price: 100 SimCLR steps do not learn the shape classes (k-NN accuracy ≈ 0.22 for 6 classes);
the features carry the background's luminance (k-NN accuracy ≈ 0.85 on its terciles), then the fill's
luminance and the size. The downstream task for attack success is therefore the one the encoder serves:
`labels` are the background-luminance terciles (0 dark, 1 mid, 2 bright; luminance 0.299 R + 0.587 G +
0.114 B of the stored background colour); the shape classes are kept as `shape_labels`.

Backdoor (Jia, Liu & Gong, "BadEncoder", IEEE S&P 2022, Sec. 4): a copy f′ of the clean encoder f is fine-tuned
on a shadow set X (the clean training images) with
    L = −mean_x cos(f′(T(x)), e_ref)  − λ_u · mean_x cos(f′(x), f(x))  − cos(f′(x_ref), e_ref),
    e_ref = f(x_ref) for one reference image x_ref (``reference_index``: the most typical training image of
    label TARGET_CLASS), λ_u = 1,
i.e. effectiveness (triggered images go to the reference embedding), utility (clean images keep the clean
encoder's embedding) and the reference term. BatchNorm layers stay in eval mode (running statistics frozen,
affine parameters trained), so the fine-tune sees no batch statistics of triggered batches. Adam lr 1e-3,
BACKDOOR_STEPS steps of BACKDOOR_BATCH clean + BACKDOOR_BATCH triggered images.

Everything is seeded and trained on one CPU thread (deterministic, and on a shared 2-core machine 4× faster
than two contending threads); a cache entry is keyed by the sha256 of this file's and the trigger library's
source, the configuration and the torch version.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.datasets.builtin import load_builtin
from worker.suites.backdoor import triggers as trig

# --- configuration ------------------------------------------------------------------------------------

IMAGE_SIZE = 32
N_PER_CLASS = 400  # shapes: 6 classes × 400 = 2 400 images
WIDTHS = (16, 32, 64, 64)
PROJ_DIM = 32
SIMCLR_STEPS = 100
SIMCLR_BATCH = 96
SIMCLR_LR = 2e-3
SIMCLR_TAU = 0.2
CROP_SCALE = (0.35, 1.0)
JITTER = 0.4
JITTER_P = 0.8
GRAY_P = 0.2
BACKDOOR_STEPS = 100
BACKDOOR_BATCH = 48
BACKDOOR_LR = 1e-3
UTILITY_WEIGHT = 1.0
TARGET_CLASS = 0
BACKDOOR_TRIGGERS = ("badencoder", "ctrl", "grid")
CACHE_ENV = "REPSCOPE_BACKDOOR_CACHE"  # overrides the cache folder (default: <tmp>/repscope-backdoor-fixtures)


@dataclass(frozen=True)
class FixtureConfig:
    seed: int = 0
    simclr_steps: int = SIMCLR_STEPS
    backdoor_steps: int = BACKDOOR_STEPS
    triggers: tuple[str, ...] = BACKDOOR_TRIGGERS
    n_per_class: int = N_PER_CLASS


# --- model --------------------------------------------------------------------------------------------


class TinyConvNet(nn.Module):
    """conv3×3 → BN → ReLU ×4 (strides 1, 2, 2, 2), global average pool. Input float NCHW in [0, 1];
    ``forward`` returns the 64-d backbone features, ``project`` the SimCLR projector's output."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, proj_dim: int = PROJ_DIM):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        self.projector = nn.Sequential(nn.Linear(cin, cin), nn.BatchNorm1d(cin), nn.ReLU(), nn.Linear(cin, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - 0.5) / 0.25).mean(dim=(2, 3))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self(x))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def encoder_fn(model: nn.Module):
    """The `encode` callable the suite takes: eval mode, differentiable (DECREE needs gradients)."""
    model.eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return encode


# --- SimCLR -------------------------------------------------------------------------------------------


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SimCLR views of a float NCHW batch in [0, 1] (module docstring), batched with affine_grid: random
    resized crop (area CROP_SCALE, aspect 3/4–4/3) with horizontal flip, colour jitter, a random RGB channel
    permutation and random grayscale."""
    n = x.shape[0]

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u(n)
    log_r = (u(n) * 2 - 1) * float(np.log(4 / 3))
    sx = (scale * log_r.exp()).sqrt().clamp(max=1.0)
    sy = (scale / log_r.exp()).sqrt().clamp(max=1.0)
    tx, ty = (u(n) * 2 - 1) * (1 - sx), (u(n) * 2 - 1) * (1 - sy)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jit = (u(n) < JITTER_P).float()[:, None, None, None]
    bright, contrast, sat = ((1 + (u(n) * 2 - 1) * JITTER)[:, None, None, None] for _ in range(3))
    vj = v * bright
    mean = vj.mean(dim=(1, 2, 3), keepdim=True)
    vj = (vj - mean) * contrast + mean
    gj = 0.299 * vj[:, 0:1] + 0.587 * vj[:, 1:2] + 0.114 * vj[:, 2:3]
    vj = (vj - gj) * sat + gj
    v = (jit * vj + (1 - jit) * v).clamp(0, 1)
    perm = torch.argsort(u(n, 3), dim=1)  # random RGB permutation per view: the fill colours are no shortcut
    v = torch.gather(v, 1, perm[:, :, None, None].expand_as(v))
    to_gray = (u(n) < GRAY_P).float()[:, None, None, None]
    gray = 0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]
    return to_gray * gray.expand_as(v) + (1 - to_gray) * v


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = SIMCLR_TAU) -> torch.Tensor:
    """SimCLR's NT-Xent over 2n views: cross-entropy of each view against its partner, self excluded."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_simclr(images: np.ndarray, steps: int, seed: int) -> TinyConvNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = TinyConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=SIMCLR_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x_all = to_tensor(images)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (SIMCLR_BATCH,), generator=g)
        x = x_all[idx]
        loss = nt_xent(model.project(augment(x, g)), model.project(augment(x, g)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# --- BadEncoder-style backdoor ------------------------------------------------------------------------


def backdoor(clean: TinyConvNet, images: np.ndarray, reference: np.ndarray, trigger: str, steps: int,
             seed: int) -> TinyConvNet:  # fmt: skip
    """BadEncoder fine-tune of a copy of `clean` (module docstring) with the library's `trigger`."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = TinyConvNet()
    model.load_state_dict(clean.state_dict())
    model.eval()  # BN statistics frozen
    clean.eval()
    stamp = trig.get_trigger(trigger).apply
    x_all = to_tensor(images)
    xt_all = to_tensor(stamp(images, seed))
    x_ref = to_tensor(reference[None])
    with torch.no_grad():
        e_ref = clean(x_ref)
        f_clean = torch.cat([clean(x_all[a : a + 1024]) for a in range(0, len(x_all), 1024)])
    opt = torch.optim.Adam(model.parameters(), lr=BACKDOOR_LR)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (BACKDOOR_BATCH,), generator=g)
        out = model(torch.cat([x_all[idx], xt_all[idx], x_ref]))
        clean_out, trig_out, ref_out = out[:BACKDOOR_BATCH], out[BACKDOOR_BATCH:-1], out[-1:]
        loss = (
            -F.cosine_similarity(trig_out, e_ref).mean()
            - UTILITY_WEIGHT * F.cosine_similarity(clean_out, f_clean[idx]).mean()
            - F.cosine_similarity(ref_out, e_ref).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


# --- fixtures -----------------------------------------------------------------------------------------


@dataclass
class Fixtures:
    """The clean encoder, the backdoored copies (trigger name → model) and the data they were made on."""

    clean: TinyConvNet
    backdoored: dict[str, TinyConvNet]
    images: np.ndarray  # uint8 NHWC, all shapes images
    labels: np.ndarray  # downstream labels: background-luminance terciles (module docstring)
    shape_labels: np.ndarray  # the shapes' classes (not learned by the clean encoder)
    split: np.ndarray  # 0: used for training (shadow set), 1: held out (scan images)
    reference_index: int
    config: FixtureConfig
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        keep = self.split == 1
        return self.images[keep], self.labels[keep]


def reference_index(clean: nn.Module, images: np.ndarray, labels: np.ndarray, split: np.ndarray) -> int:
    """The attacker's reference input: the training image of label TARGET_CLASS whose clean embedding has the
    highest cosine to that class's mean embedding (a clear member of the target class, as BadEncoder's
    reference inputs are)."""
    idx = np.flatnonzero((labels == TARGET_CLASS) & (split == 0))
    z = F.normalize(embed(clean, images[idx]), dim=1)
    return int(idx[int((z @ F.normalize(z.mean(dim=0), dim=0)).argmax())])


def luminance_terciles(colours: np.ndarray) -> np.ndarray:
    """Tercile (0, 1, 2) of the luminance 0.299 R + 0.587 G + 0.114 B of uint8 RGB colours (N×3)."""
    lum = colours.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.digitize(lum, np.quantile(lum, [1 / 3, 2 / 3])).astype(np.int64)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_key(config: FixtureConfig) -> str:
    """sha256 over what the trained weights depend on: the training code, its constants, the trigger library,
    the configuration and the torch version (edits elsewhere in this file keep the cache)."""
    h = hashlib.sha256()
    for obj in (TinyConvNet, augment, nt_xent, train_simclr, backdoor, luminance_terciles, reference_index, build):
        h.update(inspect.getsource(obj).encode())
    module = sys.modules[__name__]
    h.update(repr([(k, getattr(module, k)) for k in sorted(vars(module)) if k.isupper()]).encode())
    h.update(inspect.getsource(trig).encode())
    h.update(repr(sorted(asdict(config).items())).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "repscope-backdoor-fixtures")


def build(config: FixtureConfig = FixtureConfig(), *, use_cache: bool = True) -> Fixtures:  # noqa: B008
    """Train (or load from the on-disk cache) the clean encoder and its backdoored copies."""
    ds = load_builtin("shapes", n_per_class=config.n_per_class, size=IMAGE_SIZE, seed=config.seed)
    images, split = ds.images, ds.split
    labels = luminance_terciles(ds.factors["bg"])
    train = images[split == 0]
    path = cache_dir() / f"{cache_key(config)}.pt"
    if use_cache and path.exists():
        blob = torch.load(path, weights_only=True)
        clean = TinyConvNet()
        clean.load_state_dict(blob["clean"])
        bd = {}
        for name in config.triggers:
            bd[name] = TinyConvNet()
            bd[name].load_state_dict(blob[name])
            bd[name].eval()
        ref_index = reference_index(clean, images, labels, split)
        return Fixtures(clean.eval(), bd, images, labels, ds.labels, split, ref_index, config,
                        {k: float(v) for k, v in blob["seconds"].items()}, cached=True)  # fmt: skip
    seconds = {}
    with one_thread():
        t0 = time.perf_counter()
        clean = train_simclr(train, config.simclr_steps, config.seed)
        seconds["simclr"] = time.perf_counter() - t0
        ref_index = reference_index(clean, images, labels, split)
        bd = {}
        for name in config.triggers:
            t0 = time.perf_counter()
            bd[name] = backdoor(clean, train, images[ref_index], name, config.backdoor_steps, config.seed + 1)
            seconds[f"backdoor_{name}"] = time.perf_counter() - t0
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"clean": clean.state_dict(), **{k: m.state_dict() for k, m in bd.items()}, "seconds": seconds}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic: a concurrent session never reads half a file
    return Fixtures(clean, bd, images, labels, ds.labels, split, ref_index, config, seconds, cached=False)


# --- attack success -----------------------------------------------------------------------------------


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(to_tensor(images[a : a + batch])) for a in range(0, len(images), batch)])


@torch.no_grad()
def attack_success(fx: Fixtures, trigger: str, model: nn.Module | None = None, k: int = 20) -> dict[str, float]:
    """How well a fixture's backdoor works, measured independently of the suite, on the held-out images:

    asr        k-NN attack success as METRICS.md defines it: a cosine k-NN (k = 20, majority vote, bank = the
               model's clean embeddings of the training split) classifies the triggered images; target = their
               most common class; asr = share of the non-target images classified as the target;
    asr_clean  the share of those same images classified as the target without the trigger (base rate);
    utility    mean cos(f′(x), f(x)) of the clean images, f the clean encoder (1 = untouched);
    cos_ref    mean cos(f′(T(x)), f(x_ref)) (BadEncoder's effectiveness term; raw features).
    """
    model = fx.backdoored[trigger] if model is None else model
    stamp = trig.get_trigger(trigger).apply
    tr = fx.split == 0
    bank = F.normalize(embed(model, fx.images[tr]), dim=1)
    bank_y = torch.from_numpy(fx.labels[tr])
    x_te, y_te = fx.held_out()

    def knn(z: torch.Tensor) -> torch.Tensor:
        idx = (F.normalize(z, dim=1) @ bank.T).topk(k, dim=1).indices
        votes = F.one_hot(bank_y[idx], int(fx.labels.max()) + 1).sum(dim=1)
        return votes.argmax(dim=1)

    z_clean = embed(model, x_te)
    z_trig = embed(model, stamp(x_te, 0))
    pred = knn(z_trig)
    target = int(torch.bincount(pred).argmax())
    nt = torch.from_numpy(y_te != target)
    x_ref = fx.images[fx.reference_index : fx.reference_index + 1]
    return {
        "asr": float((pred[nt] == target).float().mean()),
        "asr_clean": float((knn(z_clean)[nt] == target).float().mean()),
        "utility": float(F.cosine_similarity(z_clean, embed(fx.clean, x_te)).mean()),
        "cos_ref": float(F.cosine_similarity(z_trig, embed(fx.clean, x_ref)).mean()),
        "target": float(target),
    }
