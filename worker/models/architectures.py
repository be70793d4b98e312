"""Architectures from the libraries users train with: timm, torchvision, and (for one layout no library has)
solo-learn's CIFAR ResNets; Hugging Face models are built from their own config.json (worker.models.hf).

``build(arch, ...)`` returns the network whose ``forward(x)`` gives the pooled features [N, D], with what the
loader needs around it: the classifier head the weights may still carry (dropped by a named rule), the
library's own checkpoint converter (timm's ``checkpoint_filter_fn``) and the evaluation preprocessing from the
model's config (timm ``pretrained_cfg``; torchvision's default weights' transforms, metadata only).
Nothing is downloaded: every model is built with random initialisation and then loaded strictly.

Names (repscope.architectures resolves them, torch-free, for the API too): a timm model name, ``torchvision:<name>``,
``resnet18_cifar`` / ``resnet50_cifar`` (solo-learn CIFAR stem) and the aliases ``vit_small`` / ``vit_tiny``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from repscope import architectures as names
from worker.datasets.preprocessing import Preprocessing

from . import cifar
from .features import POOLS

TIMM_TOKEN_POOL = {"cls": "token", "mean": "avg"}  # timm VisionTransformer global_pool values


class ArchitectureError(ValueError):
    """The architecture cannot be built as asked (unknown name, kwargs it does not take)."""


@dataclass
class Architecture:
    """A features network and how to load and feed it."""

    name: str  # as resolved: "vit_small_patch14_reg4_dinov2", "torchvision:resnet101", "resnet18_cifar", "hf"
    library: str  # timm | torchvision | repscope | hf
    model: nn.Module  # forward(x) -> [N, D] pooled features
    preprocessing: Preprocessing
    pool: str  # "cls", "mean" (patch tokens, registers excluded) or "global average" (conv maps)
    classifier: tuple[str, ...] = ()  # key prefixes of the classification head weights may carry
    filter_fn: Callable[[dict, nn.Module], dict] | None = None
    filter_name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: nn.Module | None = None  # the module the checkpoint's tensors fill, when not `model` (HF's inner model)

    @property
    def weights_module(self) -> nn.Module:
        return self.target if self.target is not None else self.model

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "library": self.library, "pool": self.pool, "kwargs": dict(self.kwargs),
                "converter": self.filter_name}


def build(arch: str, *, arch_kwargs: dict[str, Any] | None = None, pool: str = "cls") -> Architecture:
    """The features network named ``arch`` (random init), with ``arch_kwargs`` passed to its constructor."""
    if pool not in POOLS:
        raise ArchitectureError(f"pool must be one of {POOLS}, got {pool!r}")
    try:
        library, name = names.resolve_name(arch)
    except ValueError as exc:
        raise ArchitectureError(str(exc)) from None
    kwargs = dict(arch_kwargs or {})
    reserved = sorted(set(kwargs) & names.RESERVED_KWARGS)
    if reserved:
        raise ArchitectureError(f"arch_kwargs {reserved} are not allowed: the uploaded checkpoint is the weights")
    builder = {"timm": _timm, "torchvision": _torchvision, "repscope": _repscope}.get(library)
    if builder is None:
        raise ArchitectureError(f"architecture {arch!r} is built from the checkpoint's own config (a Hugging Face "
                                "model zip), not by name")
    try:
        return builder(name, kwargs, pool)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise ArchitectureError(f"cannot build {arch!r} with arch_kwargs {kwargs}: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:300]}") from None


# ---------------------------------------------------------------- timm


def _timm(name: str, kwargs: dict[str, Any], pool: str) -> Architecture:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    used = "global average"
    if _is_token_model(model):
        has_cls = getattr(model, "cls_token", None) is not None
        want = TIMM_TOKEN_POOL[pool] if has_cls else "avg"
        if model.global_pool != want:  # after construction, so the final norm stays where the weights expect it
            model.reset_classifier(0, global_pool=want)
        used = "cls" if want == "token" else "mean"
    classifier = model.pretrained_cfg.get("classifier") or "head"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    module = sys.modules[type(model).__module__]
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    prep = Preprocessing.from_timm_model(model)
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        prep = prep.with_overrides(crop=size if isinstance(size, int) else tuple(size))
    return Architecture(name=name, library="timm", model=model.eval(), preprocessing=prep, pool=used,
                        classifier=tuple(f"{c}." for c in classifiers), filter_fn=filter_fn,
                        filter_name=f"{module.__name__}.checkpoint_filter_fn" if filter_fn else None, kwargs=kwargs)


def _is_token_model(model: nn.Module) -> bool:
    """timm ViT-family models: token sequences with a settable global_pool (token / avg)."""
    return hasattr(model, "num_prefix_tokens") and getattr(model, "global_pool", None) in ("token", "avg", "")


# ---------------------------------------------------------------- torchvision


def _torchvision(name: str, kwargs: dict[str, Any], pool: str) -> Architecture:
    import torchvision

    model = torchvision.models.get_model(name, weights=None, **kwargs)
    head = _drop_last_linear(model)
    return Architecture(name=f"{names.TORCHVISION_PREFIX}{name}", library="torchvision", model=model.eval(),
                        preprocessing=_torchvision_preprocessing(name), pool=_torchvision_pool(name),
                        classifier=(f"{head}.",), kwargs=kwargs)


def _drop_last_linear(model: nn.Module) -> str:
    """Replace the classifier (the last nn.Linear: resnet fc, vit heads.head, convnext classifier.2, ...) with
    Identity, so forward returns the features that fed it. Returns its name."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("no linear classifier found to remove")
    name = linears[-1]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return name


def _torchvision_pool(name: str) -> str:
    return "cls" if name.startswith("vit_") else "global average"


def _torchvision_preprocessing(name: str) -> Preprocessing:
    """The default weights' eval transform (crop, resize, interpolation, mean, std): metadata, no download."""
    import torchvision

    try:
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        return Preprocessing(crop=(224, 224), resize=256, source="ImageNet defaults")
    crop = t.crop_size[0] if len(t.crop_size) == 1 else tuple(t.crop_size)
    resize = t.resize_size[0] if len(t.resize_size) == 1 else tuple(t.resize_size)
    ratio = crop / resize if isinstance(crop, int) and isinstance(resize, int) else None  # a crop override keeps it
    return Preprocessing(crop=(crop, crop) if isinstance(crop, int) else crop, resize=resize,
                         interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std),
                         source=f"torchvision {name} default weights' transforms", crop_pct=ratio)


# ---------------------------------------------------------------- layouts no library has


def _repscope(name: str, kwargs: dict[str, Any], pool: str) -> Architecture:
    if name not in cifar.CIFAR_ARCHS:
        raise ValueError(f"no built-in architecture {name!r}")
    model = cifar.cifar_resnet(cifar.CIFAR_ARCHS[name], **kwargs)
    model.fc = nn.Identity()
    size = cifar.CIFAR_SIZE
    prep = Preprocessing(crop=(size, size), resize=size, interpolation="bilinear", mean=cifar.CIFAR_MEAN,
                         std=cifar.CIFAR_STD, source="solo-learn CIFAR evaluation", crop_pct=1.0)
    return Architecture(name=name, library="repscope", model=model.eval(), preprocessing=prep, pool="global average",
                        classifier=("fc.",), kwargs=kwargs)
