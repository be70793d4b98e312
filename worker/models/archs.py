"""Built-in encoder architectures (no torchvision, no timm) and the name -> constructor registry.

Parameter names follow the reference implementations, so their state_dicts load without renaming:
  * ResNets: torchvision ``resnet.py`` (conv1, bn1, layer1..4, downsample.0/1, fc). The CIFAR variant is
    solo-learn's / SimCLR's ResNet-18: torchvision's with a 3x3 stride-1 stem and no max-pool.
  * ViTs: DINO ``vision_transformer.py`` / timm (patch_embed.proj, cls_token, pos_embed, blocks.i.norm1,
    attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, norm, head). Pre-norm blocks, LayerNorm eps 1e-6.
  * Projector: solo-learn / SimCLR MLP, ``projector.{0,1,3,...}`` = Linear, BatchNorm1d, ReLU, ..., Linear.

Every model's ``forward(x)`` returns one tensor selected by its ``output`` attribute:
"backbone" (pooled features, the default), "projector" (projector on top of them) or "logits" (the
classification head ``fc`` / ``head``). Everything here is TorchScript-scriptable, traceable and exportable.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = ("backbone", "projector", "logits")
POOLS = ("cls", "mean")

# torchvision resnet18 / resnet50 stage layout (He et al., CVPR 2016, Table 1).
RESNET18_LAYERS = (2, 2, 2, 2)
RESNET50_LAYERS = (3, 4, 6, 3)
RESNET_WIDTH = 64
# DINO vision_transformer.py: vit_small = 384 wide, 6 heads; vit_tiny = 192 wide, 3 heads; depth 12, mlp 4x.
VIT_SMALL = {"embed_dim": 384, "num_heads": 6}
VIT_TINY = {"embed_dim": 192, "num_heads": 3}
VIT_DEPTH = 12
VIT_MLP_RATIO = 4.0
VIT_PATCH = 16
VIT_IMG_SIZE = 224
VIT_HEAD_DIM = 64  # used to infer num_heads when only the width is known
LN_EPS = 1e-6
INIT_STD = 0.02  # trunc_normal_ std for ViT weights and tokens (DINO / timm)


def _check_output(output: str, has_projector: bool) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "projector" and not has_projector:
        raise ValueError("output='projector' needs a model built with projector_dims")


def make_projector(dims: Sequence[int] | None) -> nn.Module | None:
    """SimCLR / solo-learn MLP projector: Linear -> BatchNorm1d -> ReLU between layers, plain last Linear."""
    if not dims:
        return None
    if len(dims) < 2:
        raise ValueError(f"projector_dims needs at least input and output sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- ResNets (torchvision layout)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision "ResNet v1.5") -> 1x1 with 4x expansion (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet returning globally average-pooled features (see module docstring)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        stem: str = "imagenet",
        width: int = RESNET_WIDTH,
        in_chans: int = 3,
        num_classes: int = 1000,
        projector_dims: Sequence[int] | None = None,
        output: str = "backbone",
    ):
        super().__init__()
        if stem == "cifar":  # SimCLR appendix B.9 / solo-learn: 3x3 stride-1 conv, no max-pool
            self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self.projector = make_projector(projector_dims)
        _check_output(output, self.projector is not None)
        self.output = output
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        if self.output == "logits":
            return self.fc(feats)
        if self.output == "projector" and self.projector is not None:
            return self.projector(feats)
        return feats


def resnet18_cifar(**kw) -> ResNet:
    """CIFAR ResNet-18 (SimCLR / solo-learn): 3x3 stem, no max-pool, 512-d features at width 64."""
    kw.setdefault("num_classes", 10)
    return ResNet(BasicBlock, RESNET18_LAYERS, stem="cifar", **kw)


def resnet50(**kw) -> ResNet:
    """ImageNet ResNet-50 (torchvision v1.5 layout), 2048-d features at width 64."""
    return ResNet(Bottleneck, RESNET50_LAYERS, stem="imagenet", **kw)


# ---------------------------------------------------------------- Vision Transformer (DINO / timm layout)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with CLS token and learned positional embedding; pool="cls" (DINO) or "mean" of patch tokens.

    Images of another size than img_size get a bicubically interpolated positional embedding
    (DINO's ``interpolate_pos_encoding``).
    """

    def __init__(
        self,
        *,
        img_size: int = VIT_IMG_SIZE,
        patch_size: int = VIT_PATCH,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = VIT_DEPTH,
        num_heads: int = 6,
        mlp_ratio: float = VIT_MLP_RATIO,
        qkv_bias: bool = True,
        num_classes: int = 0,
        pool: str = "cls",
        projector_dims: Sequence[int] | None = None,
        output: str = "backbone",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.patch_size = patch_size
        self.img_size = img_size
        self.pool = pool
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.projector = make_projector(projector_dims)
        _check_output(output, self.projector is not None)
        self.output = output
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, n_patches: int, h: int, w: int) -> torch.Tensor:
        n_pos = self.pos_embed.shape[1] - 1
        if n_patches == n_pos and h == w:
            return self.pos_embed
        side = int(math.sqrt(n_pos))
        patch_pos = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, size=(h // self.patch_size, w // self.patch_size), mode="bicubic", align_corners=False
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, n_patches, -1)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: [N, 1 + patches, D], CLS first."""
        h, w = x.shape[-2], x.shape[-1]
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, h, w)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        if self.output == "logits":
            return self.head(feats)
        if self.output == "projector" and self.projector is not None:
            return self.projector(feats)
        return feats


def vit_small(**kw) -> VisionTransformer:
    """ViT-S/16 (DINO): 384-d, 12 blocks, 6 heads."""
    return VisionTransformer(**{**VIT_SMALL, **kw})


def vit_tiny(**kw) -> VisionTransformer:
    """ViT-Ti/16 (DINO / DeiT): 192-d, 12 blocks, 3 heads."""
    return VisionTransformer(**{**VIT_TINY, **kw})


# ---------------------------------------------------------------- registry

TOKEN_ARCHS = ("vit_small", "vit_tiny")  # built-ins that take pool="cls"|"mean"
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": resnet18_cifar,
    "resnet50": resnet50,
    "vit_small": vit_small,
    "vit_tiny": vit_tiny,
}


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def get_arch(name: str, **kw) -> nn.Module:
    """Build a built-in architecture, or any timm model (``num_classes=0``: pooled features) when timm exists."""
    if name in ARCHS:
        return ARCHS[name](**kw)
    if timm_available():
        import timm

        if timm.is_model(name):
            return timm.create_model(name, pretrained=False, num_classes=0, **kw)
    timm_note = "or any timm model name" if timm_available() else "timm is not installed, so no timm names"
    raise ValueError(f"unknown architecture {name!r}: built-ins are {sorted(ARCHS)} ({timm_note})")


# ---------------------------------------------------------------- constructor arguments from a state_dict


def _projector_dims(sd: dict[str, torch.Tensor]) -> list[int] | None:
    mats = sorted(
        ((int(k.split(".")[1]), v) for k, v in sd.items()
         if k.startswith("projector.") and k.endswith(".weight") and v.ndim == 2),
        key=lambda kv: kv[0],
    )  # fmt: skip
    if not mats:
        return None
    return [int(mats[0][1].shape[1])] + [int(w.shape[0]) for _, w in mats]


def infer_arch_kwargs(name: str, sd: dict[str, torch.Tensor]) -> dict:
    """Size arguments of a built-in architecture read off a (normalised) state_dict's shapes.

    ResNets: width, in_chans, num_classes; ViTs: embed_dim, depth, patch_size, img_size, in_chans, mlp_ratio,
    num_heads (= embed_dim / 64 unless the name's default width matches), num_classes; both: projector_dims.
    """
    kw: dict = {}
    if name in ("resnet18_cifar", "resnet50") and "conv1.weight" in sd:
        kw["width"], kw["in_chans"] = int(sd["conv1.weight"].shape[0]), int(sd["conv1.weight"].shape[1])
        if "fc.weight" in sd:
            kw["num_classes"] = int(sd["fc.weight"].shape[0])
    elif name in TOKEN_ARCHS and "cls_token" in sd:
        dim = int(sd["cls_token"].shape[-1])
        default = VIT_SMALL if name == "vit_small" else VIT_TINY
        kw["embed_dim"] = dim
        kw["num_heads"] = default["num_heads"] if dim == default["embed_dim"] else max(1, dim // VIT_HEAD_DIM)
        blocks = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
        kw["depth"] = len(blocks)
        if "patch_embed.proj.weight" in sd:
            w = sd["patch_embed.proj.weight"]
            kw["patch_size"], kw["in_chans"] = int(w.shape[-1]), int(w.shape[1])
            if "pos_embed" in sd:
                kw["img_size"] = math.isqrt(int(sd["pos_embed"].shape[1]) - 1) * kw["patch_size"]
        if "blocks.0.mlp.fc1.weight" in sd:
            kw["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / dim
        if "blocks.0.attn.qkv.weight" in sd:
            kw["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
        if "head.weight" in sd:
            kw["num_classes"] = int(sd["head.weight"].shape[0])
    dims = _projector_dims(sd)
    if dims and name in ARCHS:
        kw["projector_dims"] = dims
    return kw
