"""Clustered pools of real photographs for the label-free pool scan (issue #23, item 3): many near-duplicate
views of few scenes, as real unlabeled pools are, a small share of them triggered, and embeddings from an encoder
after a successful attack. Used by tests/unit/test_pool_natural.py and benchmarks/bench_pool_natural.py.

Scenes. The photographs scikit-image ships (``skimage.data``; no download: the grey ones stacked to RGB):
PHOTOS. Each photo gives ANCHORS_PER_PHOTO anchor crops (a square of ANCHOR_SIDE of the photo's short side at a
random place); a scene is one anchor. Its views are near-duplicates: the anchor box shifted by up to SHIFT of its
side, rescaled by 1 ± SCALE_JITTER, brightness and contrast × 1 ± PHOTO_JITTER, resampled to IMAGE_SIZE px
(antialiased bilinear). Scene sizes are unequal (log-normal weights, σ = SIZE_SIGMA, at least MIN_VIEWS views), as
in crawled pools where a few scenes dominate. Clean images then form tight clusters of very different sizes: the
regime where k-NN density of poisons is no higher than that of clean samples.

Encoder. The pool scan looks for samples that a *successful* backdoor has gathered; what matters is the geometry
the attack leaves in the victim's embedding space. We reproduce it on this pool's own images, with the training
code of benchmarks/simclr_backdoor.py (imported, unchanged): a TinyConvNet trained with SimCLR on the clean views
(its augmentations make the near-duplicate views of a scene collapse into tight clusters, as a real encoder does
with real near-duplicates), then one BadEncoder-style fine-tune per trigger (Jia et al., S&P 2022) with the
reference input the most typical view of scene TARGET_SCENE (the largest one): triggered images are pulled onto
that clean view's embedding, i.e. *into* the largest and densest clean cluster, the hardest place for a density
score. Why not the `shapes` encoders of simclr_backdoor.build: they were neither trained on photographs nor
backdoored on them, so whether the trigger still gathers natural images would be an accident of transfer, not a
model of a successful attack; and the tight natural clusters come from the encoder having seen the scenes.

Poisons: a share (POISON_RATES) of the pool, drawn at random from the views of the other scenes than the target,
replaced by their triggered copy (worker.suites.backdoor.triggers; the stamp's seed = the draw's seed). A
triggered view of the target scene lands where its clean copy already is (the attack moves nothing), so no
embedding score could, or need, find it; left in, it would only cap every AUROC at one minus the target scene's
share of the poisons.

Everything is seeded and trained on one CPU thread (deterministic); trained encoders are cached on disk next to
simclr_backdoor's (``cache_key``: this file's pool and training code and constants, simclr_backdoor's and the
trigger library's source, the configuration, the torch version).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import simclr_backdoor as sb
from worker.suites.backdoor import triggers as trig

# --- configuration ------------------------------------------------------------------------------------

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
)  # skimage.data (cat = chelsea)
IMAGE_SIZE = 32
ANCHORS_PER_PHOTO = 2
ANCHOR_SIDE = (0.35, 0.7)  # anchor crop side, share of the photo's short side
SHIFT = 0.06  # view shift, share of the anchor side (each axis)
SCALE_JITTER = 0.06
PHOTO_JITTER = 0.08  # brightness and contrast factors 1 ± this
SIZE_SIGMA = 0.8  # log-normal spread of the scene sizes
MIN_VIEWS = 8
N_IMAGES = 2400
TARGET_SCENE = "largest"  # the backdoor's reference: the most typical view of the largest scene
POISON_RATES = (0.005, 0.01, 0.02)
TRIGGERS = ("badencoder", "ctrl", "grid", "blend", "ssl_patch")


@dataclass(frozen=True)
class PoolConfig:
    seed: int = 0
    n_images: int = N_IMAGES
    photos: tuple[str, ...] = PHOTOS
    anchors_per_photo: int = ANCHORS_PER_PHOTO
    simclr_steps: int = sb.SIMCLR_STEPS
    backdoor_steps: int = sb.BACKDOOR_STEPS
    triggers: tuple[str, ...] = TRIGGERS


# --- the scenes ---------------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    """skimage.data's photograph `name` as uint8 RGB (grey ones stacked, alpha dropped)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def scene_sizes(n_scenes: int, n_images: int, rng: np.random.Generator) -> np.ndarray:
    """Views per scene: MIN_VIEWS each, the rest shared in proportion to log-normal weights (σ = SIZE_SIGMA)."""
    w = rng.lognormal(0.0, SIZE_SIGMA, n_scenes)
    extra = n_images - MIN_VIEWS * n_scenes
    if extra < 0:
        raise ValueError(f"{n_images} images cannot give {n_scenes} scenes {MIN_VIEWS} views each")
    sizes = MIN_VIEWS + np.floor(extra * w / w.sum()).astype(np.int64)
    sizes[np.argsort(-w)[: n_images - sizes.sum()]] += 1
    return sizes


def views(img: np.ndarray, box: tuple[float, float, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n near-duplicate views (uint8 n×S×S×3) of the square anchor box (centre row, centre col, side) of img."""
    h, w = img.shape[:2]
    src = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    cy, cx, side = box
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(n):
        s = side * (1 + rng.uniform(-SCALE_JITTER, SCALE_JITTER))
        y = cy + rng.uniform(-SHIFT, SHIFT) * side
        x = cx + rng.uniform(-SHIFT, SHIFT) * side
        y0 = int(round(np.clip(y - s / 2, 0, h - s)))
        x0 = int(round(np.clip(x - s / 2, 0, w - s)))
        si = int(round(s))
        crop = F.interpolate(src[:, :, y0 : y0 + si, x0 : x0 + si], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                             antialias=True, align_corners=False)[0]  # fmt: skip
        bright, contrast = 1 + rng.uniform(-PHOTO_JITTER, PHOTO_JITTER, 2)
        mean = crop.mean()
        crop = ((crop - mean) * contrast + mean) * bright
        out[i] = crop.clamp(0, 255).round().permute(1, 2, 0).to(torch.uint8).numpy()
    return out


def clustered_pool(config: PoolConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×S×S×3, scene index per image): ANCHORS_PER_PHOTO anchors per photo, scene_sizes views each,
    shuffled."""
    rng = np.random.default_rng(config.seed)
    boxes = []
    for name in config.photos:
        img = photo(name)
        short = min(img.shape[:2])
        for _ in range(config.anchors_per_photo):
            side = rng.uniform(*ANCHOR_SIDE) * short
            cy = rng.uniform(side / 2, img.shape[0] - side / 2)
            cx = rng.uniform(side / 2, img.shape[1] - side / 2)
            boxes.append((img, (cy, cx, side)))
    sizes = scene_sizes(len(boxes), config.n_images, rng)
    images = np.concatenate(
        [views(img, box, int(n), rng) for (img, box), n in zip(boxes, sizes, strict=True)]
    )
    scene = np.repeat(np.arange(len(boxes)), sizes)
    order = rng.permutation(len(images))
    return images[order], scene[order]


# --- the encoders -------------------------------------------------------------------------------------


@dataclass
class NaturalFixtures:
    """The clean SimCLR encoder of a clustered pool, its backdoored copies (trigger → model) and the pool."""

    clean: sb.TinyConvNet
    backdoored: dict[str, sb.TinyConvNet]
    images: np.ndarray  # uint8 NHWC, the clean pool
    scene: np.ndarray  # scene index per image (never given to the scan)
    reference_index: int
    config: PoolConfig
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def reference_index(clean: torch.nn.Module, images: np.ndarray, scene: np.ndarray) -> int:
    """The attacker's reference input: the view of the largest scene whose clean embedding has the highest
    cosine to that scene's mean embedding (as simclr_backdoor.reference_index does for a class)."""
    idx = np.flatnonzero(scene == np.bincount(scene).argmax())
    z = F.normalize(sb.embed(clean, images[idx]), dim=1)
    return int(idx[int((z @ F.normalize(z.mean(dim=0), dim=0)).argmax())])


def cache_key(config: PoolConfig) -> str:
    """sha256 over what the trained weights depend on: this file's pool and training code and constants,
    simclr_backdoor's and the trigger library's source, the configuration and the torch version."""
    h = hashlib.sha256()
    for obj in (photo, scene_sizes, views, clustered_pool, reference_index, build, sb, trig):
        h.update(inspect.getsource(obj).encode())
    module = sys.modules[__name__]
    h.update(repr([(k, getattr(module, k)) for k in sorted(vars(module)) if k.isupper()]).encode())
    h.update(repr(sorted(asdict(config).items())).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def build(config: PoolConfig = PoolConfig(), *, use_cache: bool = True) -> NaturalFixtures:  # noqa: B008
    """The clustered pool, its clean SimCLR encoder and one BadEncoder-style backdoor per trigger (cached)."""
    images, scene = clustered_pool(config)
    path = sb.cache_dir() / f"natural-{cache_key(config)}.pt"
    if use_cache and path.exists():
        blob = torch.load(path, weights_only=True)
        models = {}
        for name in ("clean", *config.triggers):
            models[name] = sb.TinyConvNet()
            models[name].load_state_dict(blob[name])
            models[name].eval()
        clean = models.pop("clean")
        return NaturalFixtures(clean, models, images, scene, reference_index(clean, images, scene), config,
                               {k: float(v) for k, v in blob["seconds"].items()}, cached=True)  # fmt: skip
    seconds = {}
    with sb.one_thread():
        t0 = time.perf_counter()
        clean = sb.train_simclr(images, config.simclr_steps, config.seed)
        seconds["simclr"] = time.perf_counter() - t0
        ref = reference_index(clean, images, scene)
        backdoored = {}
        for name in config.triggers:
            t0 = time.perf_counter()
            backdoored[name] = sb.backdoor(
                clean, images, images[ref], name, config.backdoor_steps, config.seed + 1
            )
            seconds[f"backdoor_{name}"] = time.perf_counter() - t0
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"clean": clean.state_dict(), **{k: m.state_dict() for k, m in backdoored.items()},
                "seconds": seconds}  # fmt: skip
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic: a concurrent session never reads half a file
    return NaturalFixtures(clean, backdoored, images, scene, ref, config, seconds, cached=False)


# --- poisoned pools -----------------------------------------------------------------------------------


def poisoned(fx: NaturalFixtures, trigger: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, poison flags): round(rate · N) images drawn at random (seed) outside the target scene, replaced by
    their triggered copy."""
    rng = np.random.default_rng(seed)
    n = len(fx.images)
    flags = np.zeros(n, bool)
    others = np.flatnonzero(fx.scene != fx.scene[fx.reference_index])
    flags[rng.choice(others, max(1, int(round(rate * n))), replace=False)] = True
    images = fx.images.copy()
    images[flags] = trig.get_trigger(trigger).apply(images[flags], seed)
    return images, flags


def pool_embeddings(fx: NaturalFixtures, trigger: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:  # fmt: skip
    """(embeddings from the `trigger`-backdoored encoder, images, poison flags) of one poisoned pool."""
    images, flags = poisoned(fx, trigger, rate, seed)
    with sb.one_thread():
        z = sb.embed(fx.backdoored[trigger], images).numpy()
    return z, images, flags
