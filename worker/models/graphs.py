"""Graph formats: TorchScript and torch.export (.pt2) archives, loaded and vetted (see worker.models.loading's
docstring for what runs and what is refused)."""

from __future__ import annotations

import io
import os
import zipfile

import torch
from torch import nn

from .errors import CheckpointError, short
from .features import encode

MAX_CODE_BYTES = 64 << 20  # one TorchScript code file


# ---------------------------------------------------------------- TorchScript


def _load_torchscript(path, device: torch.device, vet_ops: bool = True) -> nn.Module:
    from . import ts_vetting

    with zipfile.ZipFile(path) as zf:
        big = next((i.filename for i in zf.infolist() if "/code/" in i.filename and i.file_size > MAX_CODE_BYTES),
                   None)
    if big:
        raise CheckpointError(f"TorchScript code file {big!r} is too large")
    try:
        return ts_vetting.load_vetted(path, device) if vet_ops else torch.jit.load(str(path), map_location=device)
    except ts_vetting.ForbiddenOp as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:  # RuntimeError from the TorchScript importer on malformed archives
        raise CheckpointError(f"invalid TorchScript archive: {type(e).__name__}: {short(e, 600)}") from e


# ---------------------------------------------------------------- torch.export (.pt2)


def vet_export_archive(path: str | os.PathLike) -> None:
    """Refuse every part of a .pt2 that torch.export.load would unpickle, exec or eval, and graph nodes outside
    the allowlist: repscope.checkpoints' torch-free check (the API's at upload), then torch's own weights-only
    loader over the sample inputs."""
    from repscope import checkpoints

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        fmt_files = [n for n in names if n.endswith("archive_format")]
        if len(fmt_files) != 1:
            raise CheckpointError("torch.export archive must contain exactly one archive_format entry")
        root = fmt_files[0].removesuffix("archive_format")
        try:
            checkpoints.vet_export_archive(zf, root)
        except checkpoints.CheckpointError as e:
            raise CheckpointError(str(e)) from e
        for name in names:
            if name.startswith(f"{root}data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception as e:
                    raise CheckpointError(
                        f"torch.export sample inputs {name!r} are not weights-only tensors ({short(e)})"
                    ) from e


def _check_graph_ops(gm: nn.Module) -> None:
    """Second line after the archive check: every call in the loaded graph is an aten / prims operator outside
    DENIED_OPS (the allowlist of repscope.checkpoints), a Python operator or a higher-order wrapper."""
    from repscope.checkpoints import DENIED_OPS, EXPORT_NAMESPACES

    for sub in gm.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                if target.namespace not in EXPORT_NAMESPACES or target._schema.name in DENIED_OPS:
                    raise CheckpointError(f"torch.export graph calls {target}, which is not allowed")
            elif getattr(target, "__module__", None) not in (
                "_operator",
                "operator",
                "math",
                "torch",
                "torch.fx.experimental.sym_node",
            ):
                if not isinstance(target, torch._ops.HigherOrderOperator):
                    raise CheckpointError(f"torch.export graph calls {target!r}, which is not allowed")


class FixedBatch(nn.Module):
    """Run a module compiled for a static batch size on any batch: chunk, zero-pad the last chunk, trim."""

    def __init__(self, inner: nn.Module, batch: int, pool: str = "cls"):
        super().__init__()
        self.inner, self.batch, self.pool = inner, batch, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start : start + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(encode(self.inner, chunk, pool=self.pool)[:n])
        return torch.cat(outs)


def _static_input(ep) -> tuple[int | None, tuple[int, int] | None]:
    """(static batch or None, static (H, W) or None) of an exported program's first user input."""
    names = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            shape = tuple(getattr(val, "shape", ()))
            if len(shape) != 4:
                return None, None
            batch = shape[0] if isinstance(shape[0], int) else None
            hw = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
            return batch, hw
    return None, None


def _load_export(
    path, device: torch.device, pool: str, vet_ops: bool = True
) -> tuple[nn.Module, tuple[int, int] | None, list[str]]:
    vet_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"invalid torch.export archive: {type(e).__name__}: {short(e)}") from e
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    batch, hw = _static_input(ep)
    module = ep.module()
    if vet_ops:
        _check_graph_ops(module)
    notes = []
    if batch is not None:
        notes.append(f"exported with a static batch of {batch}: batches are padded to it")
        module = FixedBatch(module, batch, pool)
    return module, hw, notes


def load_graph(path, kind: str, device: torch.device, pool: str, vet_ops: bool = True):  # noqa: ANN001, ANN201
    """(module, LoadReport, static (H, W) or None) of a TorchScript or torch.export archive."""
    from .strict import LoadReport

    if kind == "torchscript":
        module = _load_torchscript(path, device, vet_ops)
        return module, LoadReport(layout="TorchScript", loaded=list(module.state_dict())), None
    module, hw, notes = _load_export(path, device, pool, vet_ops)
    return module, LoadReport(layout="torch.export", loaded=list(module.state_dict()), warnings=notes), hw
