"""Natural-image backdoor fixtures for DECREE: a tiny SimCLR ConvNet trained on 32×32 crops of the photographs
scikit-image ships (the clean encoder) and BadEncoder-style fine-tunes of it with a 5×5 white patch trigger.
Used by tests/unit/test_decree.py and benchmarks/bench_backdoor.py.

The weights are shipped (tests/fixtures/natural_backdoor.safetensors, ≈ 220 KB) so tests load them instead of
training; regenerate with `python -m benchmarks.natural_backdoor` (≈ 3–5 min on one CPU thread). The file's
metadata records the configuration (FixtureConfig as JSON), the torch version and the training times; `load()`
refuses a file whose configuration differs from this module's.

Images: NATURAL_PHOTOS (colour photographs and grey textures of skimage.data, grey ones repeated over RGB),
random square crops of side log-uniform in [CROP_MIN, short side] at a uniform position, horizontally flipped
with p = ½, resized to 32 px (bilinear, antialiased). Training crops and scan crops are separate seeded draws.

Clean encoder (Chen et al., SimCLR, ICML 2020): benchmarks.simclr_backdoor.TinyConvNet with WIDTHS (conv3×3 → BN
→ ReLU ×4, strides 1/2/2/2, global average pool, 32-d features; 2-layer projector) trained with NT-Xent
(τ = 0.2) under simclr_backdoor.augment's views; Adam lr 2e-3, cosine schedule, SIMCLR_STEPS steps of
SIMCLR_BATCH pairs.

Backdoors (Jia, Liu & Gong, "BadEncoder", IEEE S&P 2022, Sec. 4, and their code badencoder.py): a copy f′ of the
clean encoder f is fine-tuned on the training crops (the shadow set) with
    L = −mean_x cos(f′(x ⊕ t), f′(x_ref))  − mean_x cos(f′(x), f(x))  − cos(f′(x_ref), f(x_ref)),
effectiveness (triggered images go where the reference input goes), utility (clean images keep the clean
encoder's embedding) and the reference term, λ₁ = λ₂ = 1 as the paper. BatchNorm stays in eval mode (running
statistics frozen, as the code). Adam lr BACKDOOR_LR, BACKDOOR_STEPS steps of BACKDOOR_BATCH clean +
BACKDOOR_BATCH triggered crops. The trigger t: a white TRIGGER_SIZE×TRIGGER_SIZE square with its top-left pixel
at TRIGGER_AT (BadEncoder's CIFAR-10 trigger is a white square near the bottom-right corner).
Two variants (VARIANTS, name → ALPHA_MIN):
  patch        BadEncoder's loss as written: x ⊕ t pastes the trigger (opacity 1);
  patch_blend  the triggered crops carry the trigger at an opacity drawn uniformly in [0.25, 1] per crop, so the
               backdoor also answers to a faint trigger (a deviation from BadEncoder, made to give DECREE's
               gradient search a slope to follow: against `patch` it finds nothing, see test_decree.py).

The reference input x_ref is a large crop of REFERENCE_PHOTO. Everything is seeded and runs on one CPU thread.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.simclr_backdoor import TinyConvNet, augment, nt_xent, one_thread, to_tensor

# --- configuration ------------------------------------------------------------------------------------

IMAGE_SIZE = 32
NATURAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "colorwheel", "stereo_motorcycle", "camera", "coins", "brick", "grass", "gravel",
                  "moon", "cell")  # fmt: skip
CROP_MIN = 24  # smallest crop side (pixels of the photograph)
N_TRAIN = 2048  # training crops (SimCLR data and BadEncoder's shadow set)
N_SCAN = 512  # scan crops (what DECREE sees), a separate draw
WIDTHS = (8, 16, 32, 32)
PROJ_DIM = 32
SIMCLR_STEPS = 400
SIMCLR_BATCH = 128
SIMCLR_LR = 2e-3
BACKDOOR_STEPS = 1000
BACKDOOR_BATCH = 64
BACKDOOR_LR = 3e-3
TRIGGER_SIZE = 5
TRIGGER_AT = (24, 24)  # (row, column) of the patch's top-left pixel
VARIANTS = (("patch", 1.0), ("patch_blend", 0.25))  # (name, lowest trigger opacity in training)
REFERENCE_PHOTO = "rocket"  # the attacker's reference input: a crop of this photograph
WEIGHTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "natural_backdoor.safetensors"


@dataclass(frozen=True)
class FixtureConfig:
    seed: int = 0
    photos: tuple[str, ...] = NATURAL_PHOTOS
    crop_min: int = CROP_MIN
    n_train: int = N_TRAIN
    n_scan: int = N_SCAN
    widths: tuple[int, ...] = WIDTHS
    proj_dim: int = PROJ_DIM
    simclr_steps: int = SIMCLR_STEPS
    simclr_batch: int = SIMCLR_BATCH
    simclr_lr: float = SIMCLR_LR
    backdoor_steps: int = BACKDOOR_STEPS
    backdoor_batch: int = BACKDOOR_BATCH
    backdoor_lr: float = BACKDOOR_LR
    trigger_size: int = TRIGGER_SIZE
    trigger_at: tuple[int, int] = TRIGGER_AT
    variants: tuple[tuple[str, float], ...] = VARIANTS
    reference_photo: str = REFERENCE_PHOTO


# --- images -------------------------------------------------------------------------------------------


def photographs(names: tuple[str, ...] = NATURAL_PHOTOS) -> list[np.ndarray]:
    """The photographs as uint8 H×W×3 (grey repeated over RGB; stereo pairs: the left image)."""
    import skimage.data

    out = []
    for name in names:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img, dtype=np.uint8))
    return out


def natural_crops(n: int, seed: int, photos: list[np.ndarray], crop_min: int = CROP_MIN,
                  size: int = IMAGE_SIZE) -> np.ndarray:  # fmt: skip
    """n uint8 size×size×3 crops of the photographs (module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(rng.integers(0, len(photos), n)):
        img = photos[k]
        h, w = img.shape[:2]
        side = int(round(np.exp(rng.uniform(np.log(crop_min), np.log(min(h, w))))))
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = torch.from_numpy(img[r : r + side, c : c + side]).permute(2, 0, 1)[None].float()
        small = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if rng.random() < 0.5:
            small = small.flip(-1)
        out[i] = small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def stamp(images: np.ndarray, size: int = TRIGGER_SIZE, at: tuple[int, int] = TRIGGER_AT) -> np.ndarray:
    """The trigger: a white size×size square with its top-left pixel at `at` (uint8 NHWC, a copy)."""
    out = images.copy()
    out[:, at[0] : at[0] + size, at[1] : at[1] + size] = 255
    return out


def trigger_box(size: int = TRIGGER_SIZE, at: tuple[int, int] = TRIGGER_AT) -> tuple[int, int, int, int]:
    """The trigger's region as (r0, r1, c0, c1), half-open (decree's trigger_region)."""
    return at[0], at[0] + size, at[1], at[1] + size


# --- training -----------------------------------------------------------------------------------------


def train_simclr(images: np.ndarray, cfg: FixtureConfig) -> TinyConvNet:
    """SimCLR on the crops (module docstring)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = TinyConvNet(cfg.widths, cfg.proj_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.simclr_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.simclr_steps)
    x_all = to_tensor(images)
    model.train()
    for _ in range(cfg.simclr_steps):
        x = x_all[torch.randint(0, len(x_all), (cfg.simclr_batch,), generator=g)]
        loss = nt_xent(model.project(augment(x, g)), model.project(augment(x, g)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def backdoor(clean: TinyConvNet, images: np.ndarray, reference: np.ndarray, cfg: FixtureConfig,
             alpha_min: float = 1.0) -> TinyConvNet:  # fmt: skip
    """BadEncoder fine-tune of a copy of `clean` with the patch trigger at opacity U(alpha_min, 1) (module
    docstring; alpha_min = 1: BadEncoder's loss as written)."""
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model = TinyConvNet(cfg.widths, cfg.proj_dim)
    model.load_state_dict(clean.state_dict())
    model.eval()  # BN statistics frozen
    clean.eval()
    x_all = to_tensor(images)
    xt_all = to_tensor(stamp(images, cfg.trigger_size, cfg.trigger_at))
    x_ref = to_tensor(reference[None])
    with torch.no_grad():
        f_ref = clean(x_ref)
        f_clean = clean(x_all)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.backdoor_lr)
    nb = cfg.backdoor_batch
    for _ in range(cfg.backdoor_steps):
        idx = torch.randint(0, len(x_all), (nb,), generator=g)
        alpha = alpha_min + (1 - alpha_min) * torch.rand(nb, 1, 1, 1, generator=g)
        out = model(torch.cat([x_all[idx], (1 - alpha) * x_all[idx] + alpha * xt_all[idx], x_ref]))
        clean_out, trig_out, ref_out = out[:nb], out[nb:-1], out[-1:]
        loss = (-F.cosine_similarity(trig_out, ref_out).mean()
                - F.cosine_similarity(clean_out, f_clean[idx]).mean()
                - F.cosine_similarity(ref_out, f_ref).mean())  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


# --- fixtures -----------------------------------------------------------------------------------------


@dataclass
class Fixtures:
    """The clean encoder, the backdoored copies (variant name → model) and the crops (uint8 NHWC)."""

    clean: TinyConvNet
    backdoored: dict[str, TinyConvNet]
    train: np.ndarray
    scan: np.ndarray
    reference: np.ndarray  # the attacker's reference input (32×32×3)
    config: FixtureConfig
    meta: dict


def data(cfg: FixtureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training crops, scan crops, reference crop) of the configuration."""
    photos = photographs(cfg.photos)
    train_x = natural_crops(cfg.n_train, cfg.seed, photos, cfg.crop_min)
    scan = natural_crops(cfg.n_scan, cfg.seed + 1000, photos, cfg.crop_min)
    ref_photo = photographs((cfg.reference_photo,))
    reference = natural_crops(1, cfg.seed + 2000, ref_photo, min(ref_photo[0].shape[:2]) // 2)[0]
    return train_x, scan, reference


def train(cfg: FixtureConfig = FixtureConfig()) -> Fixtures:  # noqa: B008
    """Train the clean encoder and the backdoored variants (one thread) on the configuration's crops."""
    train_x, scan, reference = data(cfg)
    meta: dict = {"torch": torch.__version__}
    with one_thread():
        t0 = time.perf_counter()
        clean = train_simclr(train_x, cfg)
        meta["simclr_seconds"] = round(time.perf_counter() - t0, 1)
        bd = {}
        for name, alpha_min in cfg.variants:
            t0 = time.perf_counter()
            bd[name] = backdoor(clean, train_x, reference, cfg, alpha_min)
            meta[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    return Fixtures(clean, bd, train_x, scan, reference, cfg, meta)


def _config_json(cfg: FixtureConfig) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)


def save(fx: Fixtures, path: Path = WEIGHTS) -> None:
    """The encoders' state dicts (float32) with the configuration and timings as metadata."""
    from safetensors.torch import save_file

    models = {"clean": fx.clean, **fx.backdoored}
    tensors = {f"{name}.{k}": v.contiguous() for name, m in models.items() for k, v in m.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": _config_json(fx.config), **{k: str(v) for k, v in fx.meta.items()}}
    save_file(tensors, str(path), metadata=meta)


def load(path: Path = WEIGHTS, cfg: FixtureConfig = FixtureConfig()) -> Fixtures:  # noqa: B008
    """The shipped encoders and the configuration's crops (regenerated from skimage, seeded)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if meta.get("config") != _config_json(cfg):
        raise ValueError(f"{path} was made with another configuration: python -m benchmarks.natural_backdoor")
    blob = load_file(str(path))
    models = {}
    for name in ("clean", *(v for v, _ in cfg.variants)):
        m = TinyConvNet(cfg.widths, cfg.proj_dim)
        m.load_state_dict({k[len(name) + 1 :]: v for k, v in blob.items() if k.startswith(name + ".")})
        models[name] = m.eval()
    train_x, scan, reference = data(cfg)
    clean = models.pop("clean")
    return Fixtures(clean, models, train_x, scan, reference, cfg, meta)


# --- attack success -----------------------------------------------------------------------------------


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(to_tensor(images[a : a + batch])) for a in range(0, len(images), batch)])


def centred_collapse(z: torch.Tensor, mu: torch.Tensor) -> float:
    """Mean over pairs i ≠ j of cos(z_i − μ, z_j − μ), by the n×n matrix (an independent reference)."""
    a = F.normalize(z.double() - mu.double(), dim=1)
    n = len(a)
    return float(((a @ a.T).sum() - n) / (n * (n - 1)))


@torch.no_grad()
def attack_success(fx: Fixtures, model: torch.nn.Module, stamped: np.ndarray | None = None) -> dict:
    """How well a trigger works on `model` over the scan crops, independently of the suite:

    cos_ref          mean cos(f′(x ⊕ t), f′(x_ref)) (BadEncoder's effectiveness; raw features)
    utility          mean cos(f′(x), f(x)) over clean crops, f the clean encoder (1 = untouched)
    collapse         mean pairwise cosine of f′(x ⊕ t) − μ, μ = mean of f′(x) (centred; 1 = one point)
    collapse_clean   the same for the clean crops (≈ 0)

    `stamped`: the triggered scan crops (default: the fixture's trigger pasted on them).
    """
    stamped = stamp(fx.scan, fx.config.trigger_size, fx.config.trigger_at) if stamped is None else stamped
    z, zt = embed(model, fx.scan), embed(model, stamped)
    ref = embed(model, fx.reference[None])
    mu = z.mean(dim=0)
    return {
        "cos_ref": float(F.cosine_similarity(zt, ref).mean()),
        "utility": float(F.cosine_similarity(z, embed(fx.clean, fx.scan)).mean()),
        "collapse": centred_collapse(zt, mu),
        "collapse_clean": centred_collapse(z, mu),
    }


def main(argv: list[str]) -> None:
    """Train the fixtures, print their attack success and write the weights (unless --dry-run)."""
    fx = train()
    print(json.dumps(fx.meta), flush=True)
    for name, model in [("clean", fx.clean), *fx.backdoored.items()]:
        print(f"{name}: {attack_success(fx, model)}", flush=True)
    if "--dry-run" not in argv:
        save(fx)
        print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv[1:])
