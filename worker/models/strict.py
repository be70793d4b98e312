"""Strict loading: every encoder tensor of the architecture comes from the checkpoint, and every checkpoint
tensor is loaded or dropped by a named rule. Anything else fails with the first offending keys named.

Order (worker.models.loading): layouts.locate -> the library's converter (timm checkpoint_filter_fn) -> match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .layouts import Located, drop_rule

SHOW = 8  # keys named in an error
OPTIONAL_SUFFIXES = (".num_batches_tracked",)  # BatchNorm counters: unused in eval, absent from many releases


class StrictLoadError(ValueError):
    """The checkpoint does not fit the architecture; the message names the keys."""


@dataclass
class LoadReport:
    """What happened to every tensor: stored with the embed evaluation and shown on its page."""

    layout: str | None = None  # e.g. "DINOv2 hub with registers", "MoCo v2 (query encoder)"
    source_key: str | None = None  # nested entry used, e.g. "teacher", "state_dict"
    prefix: str = ""  # stripped from every encoder key, e.g. "module.encoder_q."
    architecture: dict[str, Any] = field(default_factory=dict)  # name, library, pool, kwargs, converter
    loaded: list[str] = field(default_factory=list)  # architecture parameter names
    dropped: dict[str, list[str]] = field(default_factory=dict)  # rule -> checkpoint keys
    converted: list[str] = field(default_factory=list)  # "register_tokens -> reg_token (timm converter)", ...
    filled: list[str] = field(default_factory=list)  # kept at init: BatchNorm counters only
    ignored_entries: list[str] = field(default_factory=list)  # non-tensor entries: optimizer, epoch, args, ...
    projector: str | None = None  # output="projector": the prefix its MLP was read from
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded into {self.architecture.get('name', '?')}"]
        if self.layout:
            parts.append(f"layout: {self.layout}")
        if self.source_key:
            parts.append(f"weights from checkpoint[{self.source_key!r}]")
        if self.prefix:
            parts.append(f"prefix {self.prefix!r} stripped")
        for rule, keys in self.dropped.items():
            parts.append(f"dropped {len(keys)} ({rule})")
        if self.converted:
            parts.append(f"{len(self.converted)} converted")
        return "; ".join(parts)


def _show(keys: list[str], shapes: dict[str, Any] | None = None) -> str:
    named = [f"{k} {tuple(shapes[k].shape)}" if shapes and k in shapes else k for k in keys[:SHOW]]
    return ", ".join(named) + (f", ... ({len(keys) - SHOW} more)" if len(keys) > SHOW else "")


def apply_converter(loc: Located, filter_fn, filter_name: str | None, model: nn.Module,  # noqa: ANN001
                    report: LoadReport) -> dict[str, torch.Tensor]:
    """Run the library's checkpoint converter on the encoder's tensors and record what it renamed, removed
    and reshaped (positional embeddings resampled to the model's grid become a warning)."""
    before = dict(loc.tensors)
    if filter_fn is None:
        return before
    by = f" ({filter_name})"
    try:
        after = filter_fn(dict(before), model)
    except Exception as exc:  # noqa: BLE001 - the weights do not fit; strict matching below names the keys
        report.warnings.append(f"the converter{by} failed on these weights ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}); keys matched as they are")
        return before
    removed = [k for k in before if k not in after]
    added = [k for k in after if k not in before]
    for k, new in zip(removed, _successors(removed, added), strict=True):
        report.converted.append(f"{loc.origin.get(k, k)} -> {new}{by}")
        if new != "(removed)":
            loc.origin[new] = f"{loc.origin.get(k, k)} (converted to {new})"
    for k in after:
        if k not in before or tuple(after[k].shape) == tuple(before[k].shape):
            continue
        if k == "pos_embed" and "register_tokens" in before and before[k].shape[1] - after[k].shape[1] == 1:
            report.converted.append(f"pos_embed[:, 0] folded into cls_token{by}")
        else:
            report.warnings.append(f"{k} resampled from {tuple(before[k].shape)} to {tuple(after[k].shape)} by "
                                   f"the converter{by}: features differ from the checkpoint's native size")
    for k in added:
        loc.origin.setdefault(k, k)
    return after


def _successors(removed: list[str], added: list[str]) -> list[str]:
    """For each removed key, the added key that replaced it: the n-th removed and the n-th added key with the same
    parent module and parameter name pair up (mlp.w12.weight -> mlp.fc1.weight, mlp.w3.weight -> mlp.fc2.weight),
    register_tokens -> reg_token; "(removed)" when the converter only dropped it."""

    def slot(key: str) -> tuple[str, str]:
        module, _, param = key.rpartition(".")
        return module.rpartition(".")[0], param

    pending: dict[tuple[str, str], list[str]] = {}
    for a in added:
        pending.setdefault(slot(a), []).append(a)
    out = []
    for r in removed:
        if r == "register_tokens" and "reg_token" in added:
            out.append("reg_token")
            continue
        queue = pending.get(slot(r)) if "." in r else None
        out.append(queue.pop(0) if queue else "(removed)")
    return out


def match(loc: Located, tensors: dict[str, torch.Tensor], model: nn.Module, classifier: tuple[str, ...],
          report: LoadReport, *, keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state_dict to load with strict=True; raises StrictLoadError naming missing / unexpected / misshaped
    keys. ``keep``: checkpoint keys outside the encoder that the caller uses (a projector)."""
    target = model.state_dict()
    loadable, unexpected, misshaped = {}, [], []
    for name, value in tensors.items():
        if name in target:
            if tuple(value.shape) != tuple(target[name].shape):
                misshaped.append(f"{name}: checkpoint {tuple(value.shape)} vs architecture {tuple(target[name].shape)}")
            else:
                loadable[name] = value
            continue
        rule = "classifier head" if name.startswith(classifier) else drop_rule(loc.origin.get(name, name))
        if rule is None:
            unexpected.append(loc.origin.get(name, name))
        else:
            report.dropped.setdefault(rule, []).append(loc.origin.get(name, name))
    for key in loc.outside:
        if key.startswith(keep):
            continue
        copy = next((p for p in loc.copies if key.startswith(p)), None)
        rule = f"second copy of the encoder under {copy!r}, not evaluated" if copy else drop_rule(key)
        if rule is None:
            unexpected.append(key)
        else:
            report.dropped.setdefault(rule, []).append(key)
    missing = [k for k in target if k not in loadable and not k.endswith(OPTIONAL_SUFFIXES)]
    report.filled = [k for k in target if k not in loadable and k.endswith(OPTIONAL_SUFFIXES)]
    _raise_if_bad(report, missing, unexpected, misshaped, loc, target)
    report.loaded = list(loadable)
    for k in report.filled:
        loadable[k] = target[k]
    return loadable


def _raise_if_bad(report: LoadReport, missing: list[str], unexpected: list[str], misshaped: list[str],
                  loc: Located, target: dict[str, torch.Tensor]) -> None:
    if not (missing or unexpected or misshaped):
        return
    arch = report.architecture.get("name", "the architecture")
    notes = ([f"weights from checkpoint[{loc.source_key!r}]"] if loc.source_key else []) + \
            ([f"prefix {loc.prefix!r} stripped"] if loc.prefix else [])
    where = f" ({', '.join(notes)})" if notes else ""
    problems = []
    if misshaped:
        problems.append(f"{len(misshaped)} tensors have the wrong shape: {'; '.join(misshaped[:SHOW])}")
    if missing:
        problems.append(f"{len(missing)} tensors of {arch} are not in the checkpoint: "
                        f"{_show(missing, target)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors have no place in {arch} and no rule drops them: "
                        f"{_show(unexpected)}")
    raise StrictLoadError(f"checkpoint does not fit {arch}{where}: " + "; ".join(problems)
                          + ". Is arch right (e.g. resnet101 rather than resnet50, a DINOv2 name for LayerScale "
                          "and register weights)? arch_kwargs set sizes the weights cannot tell.")
