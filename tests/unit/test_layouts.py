"""Real checkpoints: each training codebase's layout, saved from a random-init model built with the real library
(timm, torchvision, transformers), loads strictly, and the features equal the library's own forward on the same
batch (max relative error <= 1e-5, fp32). Truncations fail naming the keys."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from worker.models import CheckpointError, load_encoder

RTOL = 1e-5
# Small ViTs of the real timm classes (width, depth, heads, size): the layouts, not the sizes, are under test.
VIT_SMALLER = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32}
DINO2_SMALLER = {"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 28}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def features(loaded, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.module(x)


def reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (LayerScale gammas, BatchNorm statistics, tokens), so nothing loads by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
            if t.ndim == 1 and t.min() < 0.05 and "var" in str(t):  # keep variances positive
                t.abs_()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.abs_().add_(0.5)
    return model.eval()


def timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb(timm.create_model(name, pretrained=False, num_classes=0, **kwargs), seed)


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def batch(size: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ---------------------------------------------------------------- DINO / DINOv2


def test_dino_teacher_by_default_student_on_request(tmp_path):
    teacher, student = timm_model("vit_small_patch16_224", 1, **VIT_SMALLER), timm_model(
        "vit_small_patch16_224", 2, **VIT_SMALLER)
    head = {"head.mlp.0.weight": torch.randn(128, 64), "head.last_layer.weight_g": torch.ones(256, 1)}
    path = save({"teacher": {**prefixed(teacher.state_dict(), "backbone."), **head},
                 "student": {**prefixed(student.state_dict(), "module.backbone."), **prefixed(head, "module.")},
                 "optimizer": {"state": {}}, "epoch": 100, "args": argparse.Namespace(arch="vit_small")},
                tmp_path / "dino.pth")
    x = batch(32)
    loaded = load_encoder(path, arch="vit_small", arch_kwargs=VIT_SMALLER)
    assert rel_err(features(loaded, x), reference(teacher, x)) <= RTOL
    report = loaded.report
    assert report.source_key == "teacher" and report.prefix == "backbone." and report.layout == "DINO (teacher)"
    assert sorted(report.dropped["DINO projection head"]) == sorted(head)
    assert "student" in report.ignored_entries and "optimizer" in report.ignored_entries
    as_student = load_encoder(path, arch="vit_small", arch_kwargs=VIT_SMALLER, checkpoint_key="student")
    assert rel_err(features(as_student, x), reference(student, x)) <= RTOL


def dinov2_hub(model: torch.nn.Module, *, swiglu: bool = False) -> dict:
    """timm's DINOv2 ViT written back in the DINOv2 hub layout (dinov2/models/vision_transformer.py):
    registers as `register_tokens` with the CLS position in pos_embed, `mask_token`, SwiGLU as mlp.w12 / mlp.w3
    — the inverse of timm's _convert_dinov2."""
    sd = dict(model.state_dict())
    out = {}
    dim = sd["cls_token"].shape[-1]
    if "reg_token" in sd:
        cls_pos = torch.randn(1, 1, dim)
        out["register_tokens"] = sd.pop("reg_token")
        out["cls_token"] = sd.pop("cls_token") - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, sd.pop("pos_embed")], dim=1)
    for k, v in sd.items():
        if swiglu:
            k = k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    out["mask_token"] = torch.randn(1, dim)
    return out


@pytest.mark.parametrize("name, swiglu", [
    ("vit_small_patch14_dinov2", False),
    ("vit_small_patch14_reg4_dinov2", False),
    ("vit_giant_patch14_dinov2", True),
])  # fmt: skip
def test_dinov2_hub_layouts(tmp_path, name, swiglu):
    model = timm_model(name, 3, **DINO2_SMALLER)
    assert any("ls1.gamma" in k for k in model.state_dict())
    path = save(dinov2_hub(model, swiglu=swiglu), tmp_path / "hub.pth")
    x = batch(28)
    loaded = load_encoder(path, arch=name, arch_kwargs=DINO2_SMALLER)
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL
    assert loaded.report.layout.startswith("DINOv2 hub")
    assert loaded.preprocessing.interpolation == "bicubic" and loaded.preprocessing.crop == (28, 28)
    if "reg4" in name:
        assert any(c.startswith("register_tokens -> reg_token") for c in loaded.report.converted)
    if swiglu:
        assert any("mlp.w12.weight -> blocks.0.mlp.fc1.weight" in c for c in loaded.report.converted)


def test_dinov2_training_dumps_chunked_blocks(tmp_path):
    model = timm_model("vit_small_patch14_reg4_dinov2", 4, **DINO2_SMALLER)
    hub = dinov2_hub(model)
    chunked = {}
    for k, v in hub.items():  # BlockChunk with 2 chunks of 1 block: blocks.<chunk>.<global index>
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i}.{i}." + k.split(".", 2)[2]
        chunked[k] = v
    heads = {"dino_head.mlp.0.weight": torch.randn(8, 48), "ibot_head.mlp.0.weight": torch.randn(8, 48)}
    x = batch(28)
    eval_dump = save({"teacher": {**prefixed(chunked, "backbone."), **heads}}, tmp_path / "teacher_checkpoint.pth")
    loaded = load_encoder(eval_dump, arch="vit_small_patch14_reg4_dinov2", arch_kwargs=DINO2_SMALLER)
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL
    assert loaded.report.layout == "DINOv2 training checkpoint (chunked blocks)"
    assert set(loaded.report.dropped["DINOv2 DINO / iBOT heads"]) == set(heads)
    student = {k: v + 1 for k, v in chunked.items()}
    full = save({"model": {**prefixed(student, "student.backbone."), **prefixed(chunked, "teacher.backbone."),
                           **prefixed(heads, "teacher.")}, "iteration": 10}, tmp_path / "model_final.pth")
    loaded = load_encoder(full, arch="vit_small_patch14_reg4_dinov2", arch_kwargs=DINO2_SMALLER)
    assert loaded.report.prefix == "teacher.backbone."
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL
    [rule] = [r for r in loaded.report.dropped if r.startswith("second copy")]
    assert "student.backbone." in rule


# ---------------------------------------------------------------- MAE, I-JEPA, lightly


def test_mae_vit_b_decoder_dropped(tmp_path):
    model = timm_model("vit_base_patch16_224", 5, img_size=32)
    decoder = {"mask_token": torch.randn(1, 1, 512), "decoder_embed.weight": torch.randn(512, 768),
               "decoder_pos_embed": torch.randn(1, 5, 512), "decoder_blocks.0.norm1.weight": torch.randn(512),
               "decoder_norm.weight": torch.randn(512), "decoder_pred.weight": torch.randn(768, 512)}
    path = save({"model": {**model.state_dict(), **decoder}, "optimizer": {}, "epoch": 799,
                 "args": argparse.Namespace(model="mae_vit_base_patch16")}, tmp_path / "mae.pth")
    x = batch(32)
    loaded = load_encoder(path, arch="vit_base_patch16_224", arch_kwargs={"img_size": 32})
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL
    assert loaded.report.layout == "MAE pretraining checkpoint"
    dropped = {k for keys in loaded.report.dropped.values() for k in keys}
    assert dropped | {"mask_token"} >= set(decoder) - {"mask_token"}


def test_mae_vit_h14_has_sixteen_heads():
    """MAE's ViT-H/14 (1280 wide) has 16 heads; the timm name says so, nothing is guessed from the width."""
    with torch.device("meta"):
        model = timm.create_model("vit_huge_patch14_224", pretrained=False, num_classes=0, depth=1)
    assert model.embed_dim == 1280 and model.blocks[0].attn.num_heads == 16


def test_ijepa_target_encoder_without_cls_token(tmp_path):
    kwargs = {**VIT_SMALLER, "class_token": False, "global_pool": "avg", "fc_norm": False}
    target, context = timm_model("vit_small_patch16_224", 6, **kwargs), timm_model("vit_small_patch16_224", 7, **kwargs)
    predictor = {"module.predictor_embed.weight": torch.randn(32, 64), "module.mask_token": torch.randn(1, 1, 32)}
    path = save({"encoder": prefixed(context.state_dict(), "module."), "predictor": predictor,
                 "target_encoder": prefixed(target.state_dict(), "module."), "opt": {}, "epoch": 300},
                tmp_path / "ijepa.pth.tar")
    x = batch(32)
    loaded = load_encoder(path, arch="vit_small", arch_kwargs=VIT_SMALLER)
    assert loaded.report.source_key == "target_encoder" and loaded.report.layout == "I-JEPA (target encoder)"
    assert rel_err(features(loaded, x), reference(target, x)) <= RTOL
    assert any("no CLS token" in w for w in loaded.report.warnings)


def test_lightly_backbone_vit(tmp_path):
    model = timm_model("vit_small_patch16_224", 8, **VIT_SMALLER)
    sd = {**prefixed(model.state_dict(), "backbone.vit."), "backbone.mask_token": torch.randn(1, 1, 64),
          "projection_head.layers.0.weight": torch.randn(32, 64)}
    path = save(sd, tmp_path / "lightly.pth")
    loaded = load_encoder(path, arch="vit_small_patch16_224", arch_kwargs=VIT_SMALLER)
    assert loaded.report.layout == "lightly (backbone.vit)" and loaded.report.prefix == "backbone.vit."
    x = batch(32)
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL


# ---------------------------------------------------------------- contrastive / joint-embedding ResNets


def resnet(name: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    model.fc = torch.nn.Identity()
    return perturb(model, seed)


def test_moco_v2_query_encoder_named_arch(tmp_path):
    q, k = resnet(seed=9), resnet(seed=10)
    mlp = {"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.2.weight": torch.randn(128, 512)}
    path = save({"arch": "resnet18", "epoch": 200, "optimizer": {},
                 "state_dict": {**prefixed(q.state_dict(), "module.encoder_q."), **mlp,
                                **prefixed(k.state_dict(), "module.encoder_k."),
                                "module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1)}},
                tmp_path / "moco_v2.pth.tar")
    loaded = load_encoder(path)  # the checkpoint names its arch
    x = batch(64)
    assert rel_err(features(loaded, x), reference(q, x)) <= RTOL
    assert loaded.report.layout == "MoCo v2 (query encoder)" and "MoCo queue" in loaded.report.dropped
    assert set(loaded.report.dropped["classifier head"]) == {k.removeprefix("") for k in mlp}


def test_moco_v3_base_encoder(tmp_path):
    base, momentum = timm_model("vit_small_patch16_224", 11, **VIT_SMALLER), timm_model(
        "vit_small_patch16_224", 12, **VIT_SMALLER)
    head = {"head.0.weight": torch.randn(128, 64), "head.1.running_mean": torch.zeros(128)}
    path = save({"arch": "vit_small", "state_dict": {
        **prefixed({**base.state_dict(), **head}, "module.base_encoder."),
        **prefixed({**momentum.state_dict(), **head}, "module.momentum_encoder."),
        "module.predictor.0.weight": torch.randn(128, 128)}}, tmp_path / "mocov3.pth.tar")
    loaded = load_encoder(path, arch_kwargs=VIT_SMALLER)
    x = batch(32)
    assert rel_err(features(loaded, x), reference(base, x)) <= RTOL
    assert loaded.report.layout == "MoCo v3 (base encoder)"


def projector_mlp(dims: list[int], bias_last: bool, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(torch.nn.Linear(dims[i], dims[i + 1], bias=bias_last or not last))
        if not last:
            layers += [torch.nn.BatchNorm1d(dims[i + 1]), torch.nn.ReLU()]
    return perturb(torch.nn.Sequential(*layers), seed)


def test_vicreg_projector_output_without_last_bias(tmp_path):
    backbone, projector = resnet(seed=13), projector_mlp([512, 64, 64, 32], bias_last=False, seed=14)
    path = save({"model": {**prefixed(backbone.state_dict(), "module.backbone."),
                           **prefixed(projector.state_dict(), "module.projector.")}, "epoch": 100},
                tmp_path / "vicreg.pth")
    x = batch(64)
    as_backbone = load_encoder(path, arch="torchvision:resnet18")
    assert rel_err(features(as_backbone, x), reference(backbone, x)) <= RTOL
    assert "projector" in as_backbone.report.dropped
    as_projector = load_encoder(path, arch="torchvision:resnet18", output="projector")
    with torch.inference_mode():
        want = projector(backbone(x))
    assert rel_err(features(as_projector, x), want) <= RTOL
    assert as_projector.report.projector == "module.projector."


def test_barlow_twins_and_byol_online_network(tmp_path):
    backbone = resnet(seed=15)
    barlow = save({**prefixed(backbone.state_dict(), "module.backbone."),
                   "module.projector.0.weight": torch.randn(64, 512), "module.bn.running_mean": torch.zeros(64),
                   "module.bn.running_var": torch.ones(64)}, tmp_path / "barlow.pth")
    x = batch(64)
    loaded = load_encoder(barlow, arch="resnet18")
    assert rel_err(features(loaded, x), reference(backbone, x)) <= RTOL
    assert "Barlow Twins loss BatchNorm" in loaded.report.dropped
    target = resnet(seed=16)
    byol = save({**prefixed(backbone.state_dict(), "online_network.encoder."),
                 **prefixed(target.state_dict(), "target_network.encoder."),
                 "online_network.projector.0.weight": torch.randn(64, 512),
                 "predictor.net.0.weight": torch.randn(64, 64)}, tmp_path / "byol.pth")
    loaded = load_encoder(byol, arch="resnet18")
    assert rel_err(features(loaded, x), reference(backbone, x)) <= RTOL


def solo_learn_cifar_resnet18(seed: int) -> torch.nn.Module:
    """Transcribed from solo-learn (solo/methods/base.py): torchvision resnet18, CIFAR stem, no max-pool."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    model.maxpool = torch.nn.Identity()
    return perturb(model, seed)


def test_solo_learn_lightning_checkpoint_cifar_stem_exact(tmp_path):
    model, momentum = solo_learn_cifar_resnet18(17), solo_learn_cifar_resnet18(18)
    state = {**prefixed(model.state_dict(), "backbone."), **prefixed(momentum.state_dict(), "momentum_backbone."),
             "projector.0.weight": torch.randn(64, 512), "momentum_projector.0.weight": torch.randn(64, 512),
             "predictor.0.weight": torch.randn(64, 64), "classifier.weight": torch.randn(10, 512),
             "classifier.bias": torch.randn(10)}
    path = save({"epoch": 999, "global_step": 1, "pytorch-lightning_version": "2.2.0", "state_dict": state,
                 "hyper_parameters": {"cfg": {"backbone": {"name": "resnet18"}}}}, tmp_path / "byol.ckpt")
    loaded = load_encoder(path, arch="resnet18_cifar")
    x = batch(32)
    assert rel_err(features(loaded, x), reference(model, x)) <= RTOL
    assert loaded.report.layout == "PyTorch Lightning checkpoint (solo-learn)"
    assert {"online linear classifier", "projector", "predictor"} <= set(loaded.report.dropped)
    prep = loaded.preprocessing
    assert prep.crop == (32, 32) and prep.mean == (0.4914, 0.4822, 0.4465)
    padding_one = solo_learn_cifar_resnet18(17)
    padding_one.conv1.padding = (1, 1)
    assert rel_err(reference(padding_one, x), reference(model, x)) > 0.01  # the stem's padding matters


def test_timm_training_checkpoint_ema_on_request(tmp_path):
    model, ema = timm_model("resnet18", 19), timm_model("resnet18", 20)
    path = save({"epoch": 10, "arch": "resnet18", "state_dict": {**model.state_dict(), "fc.weight": torch.randn(5, 512),
                                                                 "fc.bias": torch.randn(5)},
                 "state_dict_ema": ema.state_dict(), "optimizer": {}, "version": 2,
                 "args": argparse.Namespace(model="resnet18")}, tmp_path / "last.pth.tar")
    x = batch(64)
    loaded = load_encoder(path)
    assert loaded.report.source_key == "state_dict" and rel_err(features(loaded, x), reference(model, x)) <= RTOL
    assert loaded.report.layout == "timm training checkpoint"
    as_ema = load_encoder(path, checkpoint_key="state_dict_ema")
    assert rel_err(features(as_ema, x), reference(ema, x)) <= RTOL


def test_plain_torchvision_vit_and_safetensors(tmp_path):
    torch.manual_seed(21)
    vit = perturb(torchvision.models.vit_b_16(image_size=32), 21)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "vit.safetensors")
    loaded = load_encoder(tmp_path / "vit.safetensors", arch="torchvision:vit_b_16",
                          arch_kwargs={"image_size": 32})
    vit.heads = torch.nn.Identity()
    x = batch(32)
    assert rel_err(features(loaded, x), reference(vit, x)) <= RTOL
    assert sorted(loaded.report.dropped["classifier head"]) == ["heads.head.bias", "heads.head.weight"]


# ---------------------------------------------------------------- Hugging Face


def hf_zip(model, tmp_path: Path, processor: dict | None = None) -> Path:
    folder = tmp_path / "hf"
    model.save_pretrained(folder, safe_serialization=True)
    if processor:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    path = tmp_path / "hf.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"model/{f.name}")
    return path


def test_hf_dinov2_model_and_task_model(tmp_path):
    from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

    torch.manual_seed(22)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    model = perturb(Dinov2Model(config), 22)
    processor = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                 "do_center_crop": True, "crop_size": {"height": 28, "width": 28}, "resample": 3,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    path = hf_zip(model, tmp_path, processor)
    loaded = load_encoder(path)
    assert loaded.fmt == "hf" and loaded.preprocessing.crop == (28, 28) and loaded.preprocessing.resize == 32
    x = batch(28)
    with torch.inference_mode():
        want = model(pixel_values=x).pooler_output
    assert rel_err(features(loaded, x), want) <= RTOL
    task = Dinov2ForImageClassification(Dinov2Config(**config.to_dict(), num_labels=3))
    task.dinov2.load_state_dict(model.state_dict())
    loaded = load_encoder(hf_zip(task, tmp_path / "task"))
    assert sorted(loaded.report.dropped["classifier head"]) == ["classifier.bias", "classifier.weight"]
    assert rel_err(features(loaded, x), want) <= RTOL


def test_hf_registers_mean_pool_and_vit(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTConfig, ViTModel

    torch.manual_seed(23)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14, num_register_tokens=4)
    model = perturb(Dinov2WithRegistersModel(cfg), 23)
    loaded = load_encoder(hf_zip(model, tmp_path), pool="mean")
    x = batch(28)
    with torch.inference_mode():
        tokens = model(pixel_values=x).last_hidden_state
    assert rel_err(features(loaded, x), tokens[:, 5:].mean(1)) <= RTOL  # registers excluded
    vit = perturb(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, image_size=32, patch_size=8)), 24)
    loaded = load_encoder(hf_zip(vit, tmp_path / "vit"))
    with torch.inference_mode():
        want = vit(pixel_values=batch(32)).last_hidden_state[:, 0]
    assert rel_err(features(loaded, batch(32)), want) <= RTOL


def test_hf_zip_with_custom_code_is_refused(tmp_path):
    from transformers import ViTConfig, ViTModel

    path = hf_zip(ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, image_size=16, patch_size=8)), tmp_path)
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(files["model/config.json"])
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    files["model/config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)
    with pytest.raises(CheckpointError, match="auto_map"):
        load_encoder(path)


# ---------------------------------------------------------------- truncations fail, naming the keys


def test_resnet101_weights_with_resnet50_fail_naming_keys(tmp_path):
    path = save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    for arch in ("resnet50", "torchvision:resnet50"):
        with pytest.raises(CheckpointError, match=r"255 checkpoint tensors have no place .*layer3\.6\.conv1\.weight"):
            load_encoder(path, arch=arch)


def test_dinov2_weights_in_a_vit_without_layerscale_fail(tmp_path):
    model = timm_model("vit_small_patch14_dinov2", 25, **DINO2_SMALLER)
    path = save(dinov2_hub(model), tmp_path / "hub.pth")
    with pytest.raises(CheckpointError, match=r"no place in vit_small_patch16_224 .*blocks\.0\.ls1\.gamma"):
        load_encoder(path, arch="vit_small_patch16_224", arch_kwargs={**DINO2_SMALLER, "patch_size": 14})
    reg = save(dinov2_hub(timm_model("vit_small_patch14_reg4_dinov2", 25, **DINO2_SMALLER)), tmp_path / "reg.pth")
    with pytest.raises(CheckpointError, match=r"register_tokens \(converted to reg_token\)"):
        load_encoder(reg, arch="vit_small_patch14_dinov2", arch_kwargs=DINO2_SMALLER)


def test_missing_blocks_and_wrong_shapes_fail(tmp_path):
    model = timm_model("vit_small_patch16_224", 26, **VIT_SMALLER)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    path = save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"tensors of vit_small_patch16_224 are not in the checkpoint: "
                                              r"blocks\.1\.norm1\.weight"):
        load_encoder(path, arch="vit_small_patch16_224", arch_kwargs=VIT_SMALLER)
    with pytest.raises(CheckpointError, match=r"wrong shape: cls_token: checkpoint \(1, 1, 64\) vs architecture "
                                              r"\(1, 1, 384\)"):
        load_encoder(save(model.state_dict(), tmp_path / "full.pth"), arch="vit_small_patch16_224",
                     arch_kwargs={"img_size": 32, "depth": 2})


def test_unknown_arch_and_missing_arch_are_clear(tmp_path):
    path = save(resnet().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="close names: .*resnet50"):
        load_encoder(path, arch="resnet5O")
    with pytest.raises(CheckpointError, match="name its architecture"):
        load_encoder(path)


def test_arch_kwargs_that_would_load_other_weights_are_refused(tmp_path):
    path = save(resnet().state_dict(), tmp_path / "r18.pth")
    for kwargs in ({"pretrained": True}, {"checkpoint_path": "/etc/passwd"}, {"pretrained_cfg_overlay": "x"}):
        with pytest.raises(CheckpointError, match="not allowed"):
            load_encoder(path, arch="resnet18", arch_kwargs=kwargs)
