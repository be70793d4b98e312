"""Issue #18, the torch-free side: architecture names, the checkpoint upload fields, HF model zips, a state_dict's
own `arch`, and the client / CLI that send them. Models are random-init, built with the real libraries."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from repscope import architectures
from repscope.architectures import UnknownArchitecture, resolve_name
from repscope.cache import KEYED_PARAMS
from repscope.checkpoints import NEEDS_ARCH, CheckpointError, inspect_checkpoint
from tests.unit.test_api import count, stored_files, tmp_files, upload
from tests.unit.test_client import client  # noqa: F401 - the fixture, reused

ROOT = Path(__file__).resolve().parents[2]
SAVE_HINT = "safe_serialization=True"


# ---------------------------------------------------------------- architecture names


def test_name_lists_equal_the_installed_libraries():
    timm = pytest.importorskip("timm", reason="timm is not installed: cannot compare repscope/arch_names/timm_models.txt")
    tv_models = pytest.importorskip("torchvision.models", reason="torchvision is not installed: cannot compare "
                                                                 "repscope/arch_names/torchvision_models.txt")
    stale = "stale: run scripts/update_arch_names.py"
    assert architectures._read_names("timm_models.txt") == tuple(timm.list_models()), stale
    assert architectures._read_names("torchvision_models.txt") == tuple(tv_models.list_models(module=tv_models)), stale
    assert {"resnet50", "vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2"} <= architectures.timm_names()
    assert all(timm.is_model(target) for target in architectures.ALIASES.values())


def test_resolve_name():
    assert resolve_name("resnet50") == ("timm", "resnet50")  # a bare name is timm's, though torchvision has it too
    assert resolve_name(" vit_small_patch14_reg4_dinov2 ") == ("timm", "vit_small_patch14_reg4_dinov2")
    assert resolve_name("torchvision:resnet101") == ("torchvision", "resnet101")
    assert resolve_name("vit_small") == ("timm", "vit_small_patch16_224")
    assert resolve_name("vit_tiny") == ("timm", "vit_tiny_patch16_224")
    assert resolve_name("hf") == ("hf", "hf")
    assert resolve_name("resnet50_cifar") == ("repscope", "resnet50_cifar")
    with pytest.raises(UnknownArchitecture, match=r"^unknown architecture 'resnet5o'; close names: resnet50, "):
        resolve_name("resnet5o")
    with pytest.raises(UnknownArchitecture, match=r"close names: torchvision:resnet101, "):
        resolve_name("torchvision:resnet1o1")
    with pytest.raises(UnknownArchitecture, match=r"close names: vit_small_patch14_dinov2, "):
        resolve_name("vit_small_patch14_dinov2.lvd142m")  # timm pretrained tags are not architecture names
    with pytest.raises(UnknownArchitecture, match="torchvision:<name>"):
        resolve_name("zzzzqqq")  # nothing close: the accepted forms
    assert issubclass(UnknownArchitecture, ValueError)


def test_api_side_modules_never_import_torch():
    code = ("import sys, repscope.architectures, repscope.checkpoints, repscope.client, repscope.cli, "
            "backend.api.artifacts; print(sorted({'torch', 'timm', 'torchvision', 'transformers'} & "
            "set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- upload fields


def state_dict_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


WEIGHTS = state_dict_bytes({"fc.weight": torch.ones(2, 3)})

BAD_FIELDS = {
    "unknown arch": ({"arch": "resnet5o"}, "unknown architecture 'resnet5o'; close names: resnet50, "),
    "unknown torchvision arch": ({"arch": "torchvision:resnet1o1"}, "close names: torchvision:resnet101"),
    "arch with a space": ({"arch": "resnet 50"}, "not a valid architecture name"),
    "arch_kwargs not JSON": ({"arch": "resnet50", "arch_kwargs": "{img_size: 224}"}, "arch_kwargs is not valid JSON"),
    "arch_kwargs a list": ({"arch": "resnet50", "arch_kwargs": "[224]"}, "must be a JSON object"),
    "arch_kwargs NaN": ({"arch": "resnet50", "arch_kwargs": '{"drop_rate": NaN}'}, "finite number"),
    "arch_kwargs nested": ({"arch": "resnet50", "arch_kwargs": '{"a": {"b": 1}}'}, "flat list"),
    "arch_kwargs key": ({"arch": "resnet50", "arch_kwargs": '{"img size": 1}'}, "not a Python identifier"),
    "arch_kwargs loads weights": ({"arch": "resnet50", "arch_kwargs": '{"checkpoint_path": "/etc/passwd"}'},
                                  "'checkpoint_path' is not allowed"),
    "arch_kwargs long": ({"arch": "resnet50", "arch_kwargs": json.dumps({"x": "a" * 2000})}, "limit is 2000"),
    "two means": ({"arch": "resnet50", "mean": "0.5,0.5"}, "mean must be three numbers"),
    "mean out of range": ({"arch": "resnet50", "mean": "[124, 116, 104]"}, "within [0, 1]"),
    "mean not numbers": ({"arch": "resnet50", "mean": "a,b,c"}, "mean must be three numbers"),
    "zero std": ({"arch": "resnet50", "std": "0.2,0,0.2"}, "std values must be > 0"),
    "tiny crop": ({"arch": "resnet50", "crop": "4"}, "crop must be between 8 and 4096; got 4"),
    "resize not int": ({"arch": "resnet50", "resize": "256.5"}, "resize must be an integer"),
    "interpolation": ({"arch": "resnet50", "interpolation": "nearest"}, "interpolation must be one of bilinear"),
    "checkpoint_key path": ({"arch": "resnet50", "checkpoint_key": "model/teacher"}, "checkpoint_key"),
    "hf for a state_dict": ({"arch": "hf"}, "is for a Hugging Face model zip"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_bad_checkpoint_fields_are_422s(api, app, run_id, settings, case):
    from backend.models import Artifact

    fields, words = BAD_FIELDS[case]
    response = upload(api, run_id, "w.pth", WEIGHTS, kind="checkpoint", **fields)
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []


def embed_params(api, body: dict) -> dict:
    [embed] = [e for e in body["evaluations"] if e["suite"] == "embed"]
    return api.get(f"/api/v1/evaluations/{embed['id']}").json()["params"]


def test_checkpoint_fields_are_stored_and_keyed(api, run_id):
    fields = {"arch": "vit_small_patch14_dinov2", "arch_kwargs": '{"img_size": 224, "dynamic_img_size": true}',
              "checkpoint_key": "teacher", "mean": "[0.5, 0.5, 0.5]", "std": "0.25, 0.25,0.25", "resize": "256",
              "crop": "224", "interpolation": "bicubic"}
    body = upload(api, run_id, "w.pth", WEIGHTS, kind="checkpoint", **fields).json()
    params = embed_params(api, body)
    expected = {"arch": "vit_small_patch14_dinov2", "arch_kwargs": {"img_size": 224, "dynamic_img_size": True},
                "checkpoint_key": "teacher", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize": 256,
                "crop": 224, "interpolation": "bicubic", "pool": "cls", "output": "backbone", "views": 0}
    assert {k: v for k, v in params.items() if k not in ("dataset", "suites", "cache_key")} == expected
    assert set(expected) <= set(KEYED_PARAMS) | {"pool", "output", "views"}
    plain = embed_params(api, upload(api, run_id, "w.pth", WEIGHTS, kind="checkpoint", arch="resnet50").json())
    assert set(plain) == {"arch", "pool", "output", "views", "dataset", "suites", "cache_key"}  # only what was set
    keys = {params["cache_key"], plain["cache_key"]}
    for name, value in (("crop", "256"), ("mean", "0.4,0.5,0.5"), ("checkpoint_key", "student")):
        other = embed_params(api, upload(api, run_id, "w.pth", WEIGHTS, kind="checkpoint",
                                         **{**fields, name: value}).json())
        keys.add(other["cache_key"])
    assert len(keys) == 5  # every field is part of the embed cache key


# ---------------------------------------------------------------- a state_dict naming its architecture


def test_state_dict_naming_its_arch_needs_no_arch_field(api, run_id, tmp_path):
    ckpt = state_dict_bytes({"arch": "resnet50", "epoch": 3, "state_dict": {"conv1.weight": torch.ones(4, 3, 1, 1)}})
    (tmp_path / "timm.pth").write_bytes(ckpt)
    info = inspect_checkpoint(tmp_path / "timm.pth")
    assert (info.format, info.named_arch, info.needs_arch) == ("state_dict", "resnet50", False)
    body = upload(api, run_id, "timm.pth", ckpt, kind="checkpoint").json()
    assert body["artifact"]["meta"]["arch"] == "resnet50" and body["artifact"]["meta"]["named_arch"] == "resnet50"
    assert embed_params(api, body)["arch"] == "resnet50"
    chosen = upload(api, run_id, "timm.pth", ckpt, kind="checkpoint", arch="torchvision:resnet50").json()
    assert embed_params(api, chosen)["arch"] == "torchvision:resnet50"  # the field wins over the file's entry
    moco = state_dict_bytes({"arch": "vit_base", "state_dict": {"w": torch.ones(2)}})
    refused = upload(api, run_id, "moco.pth", moco, kind="checkpoint")
    assert refused.status_code == 422, refused.text
    assert "'arch' entry" in refused.json()["detail"] and "vit_base_patch16_224" in refused.json()["detail"]
    nested = state_dict_bytes({"model": {"arch": "resnet50", "w": torch.ones(2)}})  # only a top-level entry counts
    assert upload(api, run_id, "n.pth", nested, kind="checkpoint").status_code == 422
    assert NEEDS_ARCH == {"state_dict", "safetensors"}


# ---------------------------------------------------------------- Hugging Face model zips


def tiny_dinov2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8)
    return transformers.Dinov2Model(config).eval()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def folder_members(folder: Path, top: str = "") -> dict[str, bytes]:
    return {top + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dinov2")
    tiny_dinov2().save_pretrained(folder, safe_serialization=True)
    return folder


def safetensors_reference(files: list[Path]) -> tuple[int, int]:
    """(tensors, elements) read with the safetensors library itself."""
    from safetensors.numpy import load_file

    tensors = {k: v for f in files for k, v in load_file(f).items()}
    return len(tensors), sum(v.size for v in tensors.values())


@pytest.mark.parametrize("top", ["", "dinov2-small/"])
def test_hf_zip_is_accepted(api, run_id, hf_folder, top):
    body = upload(api, run_id, "m.zip", zip_bytes(folder_members(hf_folder, top)), kind="checkpoint").json()
    artifact = body["artifact"]
    assert artifact["format"] == "hf" and artifact["meta"]["arch"] == "hf", body
    assert (artifact["meta"]["n_tensors"], artifact["meta"]["n_params"]) == safetensors_reference(
        [hf_folder / "model.safetensors"])
    assert embed_params(api, body)["arch"] == "hf"


def test_sharded_hf_zip_is_accepted(api, run_id, tmp_path):
    tiny_dinov2().save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    body = upload(api, run_id, "m.zip", zip_bytes(folder_members(tmp_path)), kind="checkpoint").json()
    meta = body["artifact"]["meta"]
    assert (meta["n_tensors"], meta["n_params"]) == safetensors_reference(shards)


def hf_cases(folder: Path) -> dict[str, tuple[dict[str, bytes], str]]:
    config = json.loads((folder / "config.json").read_text())
    weights = (folder / "model.safetensors").read_bytes()
    return {
        "no config.json": ({"model.safetensors": weights}, "a Hugging Face model zip needs config.json"),
        "auto_map": ({"config.json": json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.XModel"}}).encode(),
                      "model.safetensors": weights}, "auto_map"),
        "only pytorch_model.bin": ({"config.json": json.dumps(config).encode(), "pytorch_model.bin": b"\x80\x02."},
                                   SAVE_HINT),
        "bin without config": ({"pytorch_model.bin": b"\x80\x02."}, SAVE_HINT),
        "no model_type": ({"config.json": b'{"hidden_size": 32}', "model.safetensors": weights}, "model_type"),
        "config a list": ({"config.json": b"[]", "model.safetensors": weights}, "must be a JSON object"),
        "config too large": ({"config.json": json.dumps({**config, "x": "a" * (1 << 20)}).encode(),
                              "model.safetensors": weights}, "larger than"),
        "truncated safetensors": ({"config.json": json.dumps(config).encode(), "model.safetensors": weights[:-4]},
                                  "the data is"),
        "config in two folders": ({"a/config.json": json.dumps(config).encode(), "b/model.safetensors": weights},
                                  "needs config.json"),
    }


@pytest.mark.parametrize("case", ["no config.json", "auto_map", "only pytorch_model.bin", "bin without config",
                                  "no model_type", "config a list", "config too large", "truncated safetensors",
                                  "config in two folders"])
def test_bad_hf_zips_are_422s(api, app, run_id, settings, hf_folder, tmp_path, case):
    from backend.models import Artifact

    members, words = hf_cases(hf_folder)[case]
    content = zip_bytes(members)
    response = upload(api, run_id, "m.zip", content, kind="checkpoint")
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []
    (tmp_path / "m.zip").write_bytes(content)
    with pytest.raises(CheckpointError, match="(?i)" + words.replace("(", r"\(").replace("[", r"\[")):
        inspect_checkpoint(tmp_path / "m.zip")


def test_hf_zip_with_another_arch_is_refused(api, run_id, hf_folder):
    response = upload(api, run_id, "m.zip", zip_bytes(folder_members(hf_folder)), kind="checkpoint", arch="resnet50")
    assert response.status_code == 422 and "leave 'arch' empty" in response.json()["detail"]


# ---------------------------------------------------------------- client and CLI


def stored_zip_names(api, artifact_id: int) -> set[str]:
    content = api.get(f"/api/v1/artifacts/{artifact_id}/file").content
    return set(zipfile.ZipFile(io.BytesIO(content)).namelist())


def test_client_uploads_folders_and_modules(api, client, hf_folder, tmp_path, monkeypatch):  # noqa: F811
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the client writes its temp files
    run = client().run(project="p", name="hf", background=False)
    folder = run.log_checkpoint(1, hf_folder, dataset="digits").result()
    assert folder.artifact.format == "hf" and folder.artifact.meta["arch"] == "hf"
    assert stored_zip_names(api, folder.artifact.id) == {"config.json", "model.safetensors"}
    module = run.log_checkpoint(2, tiny_dinov2(), mean=(0.5, 0.5, 0.5), crop=32).result()
    assert module.artifact.format == "hf" and module.artifact.meta["arch"] == "hf"
    params = embed_params(api, {"evaluations": [e.model_dump() for e in module.evaluations]})
    assert (params["mean"], params["crop"]) == ([0.5, 0.5, 0.5], 32)
    timm = pytest.importorskip("timm")
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    weights = run.log_checkpoint(3, net, arch_kwargs={"drop_rate": 0.0}).result()
    assert weights.artifact.format == "state_dict" and weights.artifact.meta["arch"] == "test_resnet"
    assert weights.artifact.meta["n_params"] == sum(v.numel() for v in net.state_dict().values())
    assert embed_params(api, {"evaluations": [e.model_dump() for e in weights.evaluations]})["arch_kwargs"] == {
        "drop_rate": 0.0}
    assert list(scratch.iterdir()) == []  # every temp zip, folder and state_dict removed once uploaded


def test_cli_help_lists_the_checkpoint_flags():
    out = subprocess.run([sys.executable, "-m", "repscope.cli", "upload", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for flag in ("--kind", "--arch", "--arch-kwargs", "--checkpoint-key", "--mean", "--std", "--resize", "--crop",
                 "--interpolation", "--pool", "--output", "--views", "torchvision:<name>"):
        assert flag in out, flag


def test_cli_uploads_a_folder_with_flags(api, client, hf_folder, monkeypatch, capsys):  # noqa: F811
    from repscope import cli

    monkeypatch.setattr(cli, "_client", lambda args: client())
    code = cli.main(["upload", str(hf_folder), "--project", "p", "--run", "cli", "--step", "4", "--json",
                     "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--interpolation", "bicubic"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["upload"]["artifact"]["format"] == "hf" and out["upload"]["artifact"]["step"] == 4
    params = embed_params(api, out["upload"])
    assert (params["mean"], params["std"], params["interpolation"]) == ([0.5] * 3, [0.5] * 3, "bicubic")
    assert cli.main(["upload", str(hf_folder / "config.json"), "--kind", "embeddings", "--arch", "resnet50",
                     "--project", "p", "--run", "cli"]) == 2
    assert "applies to --kind checkpoint only" in capsys.readouterr().err


def test_hf_upload_cache_key_is_over_the_zip_bytes(api, run_id, hf_folder):
    """The embed cache key of an HF upload: the zip's sha256, the dataset's content hash, the keyed fields, v2."""
    content = zip_bytes(folder_members(hf_folder))
    body = upload(api, run_id, "m.zip", content, kind="checkpoint", dataset="shapes", crop="32").json()
    params = embed_params(api, body)
    sha = hashlib.sha256(content).hexdigest()
    assert body["artifact"]["sha256"] == sha
    blob = json.dumps({"checkpoint": sha, "dataset": "builtin:shapes:v1", "version": "v2",
                       "preprocessing": {k: params.get(k) for k in KEYED_PARAMS}}, sort_keys=True)
    assert params["cache_key"] == hashlib.sha256(blob.encode()).hexdigest()
    assert params["crop"] == 32 and params["arch"] == "hf"
