"""Where the encoder's tensors sit inside a training codebase's checkpoint, and what the rest is.

A checkpoint is a dict (possibly nested) of tensors written by some training code. ``locate`` finds, without
being told the codebase, the nested dict and the key prefix under which the named architecture's tensors are:
every candidate (nested dict, dotted prefix) is scored by how many of its keys are parameter names of the
architecture, and ties go to the copy evaluation code uses (DINO's eval_linear.py takes the teacher, I-JEPA's
the target encoder, MoCo the query encoder, BYOL the online network; timm's EMA only when asked by
``checkpoint_key``). Every other tensor must then be dropped by a named rule (DROP_RULES) or the load fails.

Layouts this covers (README "Checkpoints from your training code"; tests/unit/test_layouts.py saves each):
  DINO          {"teacher": {backbone.*, head.*}, "student": {module.backbone.*, ...}, "args": Namespace}
  DINOv2 hub    flat: cls_token, pos_embed, register_tokens, mask_token, blocks.i.ls1.gamma, blocks.i.mlp.w12 (SwiGLU)
  DINOv2 train  {"teacher": {backbone.blocks.<chunk>.<i>.*, dino_head.*, ibot_head.*}} or
                {"model": {student.backbone.*, teacher.backbone.*, ...}}
  MAE           {"model": {patch_embed.*, blocks.*, norm.*, mask_token, decoder_*}}
  I-JEPA        {"encoder": {module.*}, "target_encoder": {module.*}, "predictor": {module.*}}; no CLS token
  MoCo v2 / v3  {"arch", "state_dict": {module.encoder_q.* / encoder_k.*, queue}} / {module.base_encoder.*,
                module.momentum_encoder.*, module.predictor.*}
  SimCLR, BYOL, VICReg, Barlow Twins: backbone.*, module.backbone.*, online_network.*, projector.*, bn.*
  solo-learn    Lightning .ckpt: {"state_dict": {backbone.*, projector.*, classifier.*, momentum_*}, ...}
  lightly       backbone.vit.* (a timm ViT inside MaskedVisionTransformerTIMM)
  timm train.py {"arch", "state_dict", "state_dict_ema", "optimizer", ...}
  plain         a model.state_dict() of timm / torchvision
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_DEPTH = 3  # nested dicts and key prefixes considered
# Ties between copies of the encoder go to the one evaluation code uses; the second list loses ties.
PREFERRED = ("teacher", "online_network", "online_encoder", "target_encoder", "encoder_q", "base_encoder",
             "state_dict", "model", "backbone", "encoder", "module")
SECOND_COPIES = ("student", "encoder_k", "momentum_encoder", "momentum_backbone", "target_network",
                 "state_dict_ema", "model_ema", "ema")
# DINOv2's BlockChunk (dinov2/models/vision_transformer.py): blocks.<chunk>.<global index>.*
CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")

# Tensors an encoder evaluation does not use, each by a named rule (matched against the full checkpoint key).
DROP_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("projector", r"(?:^|\.)\w*(?:projector|projection_head|proj_head)\."),
    ("predictor", r"(?:^|\.)\w*predictor\."),
    ("prototypes (SwAV)", r"(?:^|\.)prototypes?\."),
    ("DINOv2 DINO / iBOT heads", r"(?:^|\.)(?:dino_head|ibot_head)\."),
    ("DINO projection head", r"(?:^|\.)head\.(?:mlp|last_layer)\."),
    ("MAE decoder", r"(?:^|\.)decoder(?:_\w+)?(?:\.|$)"),
    ("mask token (masked modelling, training only)", r"(?:^|\.)mask_token$"),
    ("MoCo queue", r"(?:^|\.)queue(?:_ptr)?$"),
    ("online linear classifier", r"(?:^|\.)\w*classifier\."),
    ("Barlow Twins loss BatchNorm", r"^(?:module\.)?bn\."),
    ("BatchNorm counter", r"num_batches_tracked$"),
))  # fmt: skip


class LayoutError(ValueError):
    """No part of the checkpoint fits the architecture."""


@dataclass
class Located:
    """The encoder's tensors (names as the architecture has them) and where they came from."""

    tensors: dict[str, torch.Tensor]  # architecture name -> tensor
    origin: dict[str, str]  # architecture name -> checkpoint key
    outside: dict[str, torch.Tensor]  # the chosen dict's other tensors, by checkpoint key
    source_key: str | None  # nested entry used, e.g. "teacher" or "state_dict"
    prefix: str  # stripped, e.g. "module.backbone."
    copies: list[str] = field(default_factory=list)  # prefixes of other copies of the encoder
    ignored_entries: list[str] = field(default_factory=list)  # non-tensor entries beside the weights
    chunked: bool = False
    layout: str = "plain state_dict"


def tensor_dicts(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]:
    """Every dict with string keys that holds tensors, up to MAX_DEPTH levels down, with its key path."""
    if not isinstance(obj, dict) or len(path) > MAX_DEPTH:
        return []
    found = []
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        found.append((path, tensors))
    for k, v in obj.items():
        if isinstance(k, str) and isinstance(v, dict):
            found += tensor_dicts(v, (*path, k))
    return found


def _unchunk(key: str) -> str:
    return CHUNKED_BLOCK.sub(r"blocks.\1.", key)


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return ["".join(p + "." for p in parts[:i]) for i in range(min(MAX_DEPTH, len(parts) - 1) + 1)]


def _rank(words: tuple[str, ...]) -> tuple[int, int]:
    """Tie-break, lower is better: (how many copies evaluation code avoids, the best PREFERRED position)."""
    second = sum(w in SECOND_COPIES for w in words)
    preferred = min((PREFERRED.index(w) for w in words if w in PREFERRED), default=len(PREFERRED))
    return second, preferred


def prefix_scores(tensors: dict[str, Any], known: set[str]) -> Counter[str]:
    """For each dotted prefix: how many keys under it are, once stripped (and un-chunked), architecture names."""
    scores: Counter[str] = Counter()
    for key in tensors:
        for p in _prefixes(key):
            rest = key[len(p):]
            if rest in known or _unchunk(rest) in known:
                scores[p] += 1
    return scores


def _choose_prefix(scores: Counter[str]) -> tuple[str, int]:
    best = max(scores.values())
    tied = [p for p, s in scores.items() if s == best]
    tied.sort(key=lambda p: (_rank(tuple(p.rstrip(".").split("."))), len(p)))
    return tied[0], best


def locate(checkpoint: Any, known: set[str], *, checkpoint_key: str | None = None) -> Located:
    """The architecture's tensors in ``checkpoint`` (``known``: its state_dict keys). Raises LayoutError."""
    root = checkpoint
    if checkpoint_key is not None:
        for part in checkpoint_key.split("."):
            if not isinstance(root, dict) or part not in root:
                have = sorted(map(str, root)) if isinstance(root, dict) else type(root).__name__
                raise LayoutError(f"checkpoint has no entry {checkpoint_key!r} (at {part!r} it has {have})")
            root = root[part]
    candidates = tensor_dicts(root)
    if not candidates:
        raise LayoutError("checkpoint contains no tensors (expected a state_dict, possibly nested in a dict)")
    best = None
    for path, tensors in candidates:
        scores = prefix_scores(tensors, known)
        if not scores:
            continue
        prefix, score = _choose_prefix(scores)
        second, preferred = _rank(path + tuple(prefix.rstrip(".").split(".")))
        rank = (score, -second, -preferred)
        if best is None or rank > best[0]:
            best = (rank, path, tensors, prefix, scores)
    if best is None:
        sample = sorted(candidates[0][1])[:8]
        raise LayoutError(f"no tensor of the checkpoint is a parameter of the architecture: it expects keys like "
                          f"{sorted(known)[:8]}, the checkpoint has {sample}")
    _, path, tensors, prefix, scores = best
    return _located(checkpoint, checkpoint_key, path, tensors, prefix, scores)


def _located(checkpoint, checkpoint_key, path, tensors, prefix, scores) -> Located:  # noqa: ANN001
    inside, origin, outside, chunked = {}, {}, {}, False
    for key, value in tensors.items():
        if key.startswith(prefix):
            name = _unchunk(key[len(prefix):])
            chunked |= name != key[len(prefix):]
            inside[name], origin[name] = value, key
        else:
            outside[key] = value
    top = checkpoint if isinstance(checkpoint, dict) else {}
    source = ".".join(((checkpoint_key,) if checkpoint_key else ()) + path) or None
    copies = [p for p, s in scores.items() if p != prefix and p and not prefix.startswith(p)
              and not p.startswith(prefix) and s >= max(1, scores[prefix] // 2)]
    ignored = sorted(str(k) for k, v in top.items() if not isinstance(v, torch.Tensor)
                     and (not path or k != path[0]))
    located = Located(inside, origin, outside, source, prefix, sorted(copies), ignored, chunked)
    located.layout = name_layout(top, located)
    return located


def drop_rule(key: str) -> str | None:
    """The DROP_RULES name that covers a checkpoint key, or None."""
    return next((name for name, rx in DROP_RULES if rx.search(key)), None)


def name_layout(top: dict, loc: Located) -> str:
    """A human name for the layout, from its signature keys (for the load report; loading does not depend on it)."""
    keys = set(loc.tensors) | set(loc.outside)
    words = set((loc.source_key or "").split(".")) | set(loc.prefix.rstrip(".").split("."))
    if "pytorch-lightning_version" in top:
        return "PyTorch Lightning checkpoint (solo-learn)" if "backbone" in words else "PyTorch Lightning checkpoint"
    if "target_encoder" in words:
        return "I-JEPA (target encoder)"
    if any(k.startswith(("dino_head.", "ibot_head.")) for k in loc.outside) or loc.chunked:
        return "DINOv2 training checkpoint" + (" (chunked blocks)" if loc.chunked else "")
    if "teacher" in words or "student" in words:
        return "DINO (" + ("teacher" if "teacher" in words else "student") + ")"
    if "encoder_q" in words:
        return "MoCo v2 (query encoder)"
    if "base_encoder" in words:
        return "MoCo v3 (base encoder)"
    if "online_network" in words:
        return "BYOL (online network)"
    if loc.prefix.endswith("vit.") and "backbone" in words:
        return "lightly (backbone.vit)"
    if any("decoder" in k for k in keys):
        return "MAE pretraining checkpoint"
    if "register_tokens" in keys or any(".mlp.w12." in k for k in keys) or "mask_token" in keys:
        return "DINOv2 hub" + (" with registers" if "register_tokens" in keys else "")
    if "state_dict_ema" in top:
        return "timm training checkpoint" + (" (EMA)" if "state_dict_ema" in words else "")
    return "state_dict" + (f" under {loc.prefix!r}" if loc.prefix else "")
