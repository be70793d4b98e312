"""The operator allowlist on compiled graphs, against archives rewritten the way an attacker would: script a small
module, then edit the archive's code/**.py text (dropping the debug files). Every attempt is refused with the
operator and the method named, or fails to compile; and with the vetting off, what still runs inside the real
sandbox reads no secret and writes nothing outside scratch."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from repscope.checkpoints import DENIED_OPS, inspect_checkpoint
from repscope.checkpoints import CheckpointError as UploadCheckpointError
from tests.unit.test_api import stored_files, tmp_files, upload
from worker.models.loading import CheckpointError, load_encoder
from worker.models.ts_vetting import ALLOWED_NAMESPACES, ForbiddenOp, check_module, load_vetted
from worker.sandbox import EncoderJob, run_job

SECRET = "rs_admin-secret-token-77f0c2"


class Leaf(torch.nn.Module):
    """A submodule with state methods: TorchScript runs __setstate__ while loading."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + self.buf

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.buf, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.buf = state[0]
        self.training = state[1]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.leaf = Leaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leaf(x).flatten(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.script(Net()), path)
    return path


@pytest.fixture
def secret(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin-token").write_text(SECRET)
    return data / "admin-token"


def rewrite(src: Path, dst: Path, edits: list[tuple[str, str]]) -> Path:
    """Apply text edits to the archive's TorchScript code, drop the debug files: a hand-made archive."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            data = zin.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                text = data.decode()
                for old, new in edits:
                    assert old in text, old
                    text = text.replace(old, new, 1)
                data = text.encode()
            zout.writestr(info.filename, data)
    return dst


def in_forward(expr: str) -> list[tuple[str, str]]:
    """Net.forward adds a tensor computed by `expr` to its output (so it is not dead code)."""
    return [("    return _0\n", f"    _s = {expr}\n    return torch.add(_0, torch.sum(_s.float()))\n")]


def in_setstate(expr: str) -> list[tuple[str, str]]:
    """Leaf.__setstate__ (run by torch.jit.load) folds a tensor computed by `expr` into its buffer."""
    return [("    self.buf = (state)[0]\n", f"    self.buf = torch.add((state)[0], torch.sum(({expr}).float()))\n")]


def in_submodule(stmt: str) -> list[tuple[str, str]]:
    """Leaf.forward (a submodule method, inlined into Net.forward) runs a statement first."""
    return [("    return torch.add(_1, buf)\n", f"    {stmt}\n    return torch.add(_1, buf)\n")]


def attacks(secret: Path, out: Path) -> dict[str, tuple[list[tuple[str, str]], str]]:
    """name -> (code edits, what the refusal must name)."""
    read = f'torch.from_file("{secret}", False, {len(SECRET)}, dtype=0)'
    concat = f'getattr(torch, "from_" "file")("{secret}", False, {len(SECRET)}, dtype=0)'
    return {
        "from_file in forward": (in_forward(read), "__torch__.*Net.forward calls aten::from_file"),
        "getattr + string concatenation": (in_forward(concat), "__torch__.*Net.forward calls aten::from_file"),
        "from_file in __setstate__": (in_setstate(read), "__torch__.*Leaf.__setstate__ calls aten::from_file"),
        "save in forward": ([("    return _0\n", f'    torch.save(x, "{out}")\n    return _0\n')],
                            "__torch__.*Net.forward calls aten::save"),
        "save in a submodule method": (in_submodule(f'torch.save(x, "{out}")'), "__torch__.*Leaf.forward calls aten::save"),
        "save in __setstate__": ([("    self.training = (state)[1]\n",
                                   f'    self.training = (state)[1]\n    torch.save(self.buf, "{out}")\n')],
                                 "__torch__.*Leaf.__setstate__ calls aten::save"),
        "debugprims namespace": (in_forward('ops.debugprims.load_tensor("weights", [4], [1], dtype=6, '
                                            'device=torch.device("cpu"))'), "debugprims::load_tensor"),
        "c10d namespace": (in_forward('ops._c10d_functional.all_reduce(x, "sum", "0")'),
                           "_c10d_functional::all_reduce"),
        "profiler namespace": (in_forward('ops.profiler._record_function_enter("x", None)'),
                               "profiler::_record_function_enter"),
        "open": (in_forward(f'open("{secret}")'), "undefined value open"),
        "os.system": (in_forward(f'os.system("cat {secret} > {out}")'), "undefined value os"),
        "subprocess": (in_forward('subprocess.run(["sh", "-c", "id"])'), "undefined value subprocess"),
        "socket": (in_forward('socket.create_connection(("127.0.0.1", 5432))'), "undefined value socket"),
        "__import__": (in_forward('__import__("os").system("id")'), "undefined value __import__"),
    }


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)


def sandboxed(path: Path, images: np.ndarray, secret: Path, vet_ops: bool = True):
    return run_job(EncoderJob(task="embed", vet_ops=vet_ops), path, images, progress=lambda f, m: None,
                   hidden=(secret.parent,))


@pytest.mark.parametrize("name", list(attacks(Path("/x"), Path("/y"))))
def test_attack_is_refused_naming_the_op(name, base, secret, tmp_path, images):
    out = tmp_path / "written.pt"
    edits, expected = attacks(secret, out)[name]
    path = rewrite(base, tmp_path / "evil.pt", edits)
    with pytest.raises(CheckpointError) as refused:
        sandboxed(path, images, secret)
    message = str(refused.value)
    assert re.search(expected, message), message
    if "undefined value" not in expected:
        assert "not allowed" in message
    else:
        assert "invalid TorchScript archive" in message
    assert SECRET not in message and not out.exists()


@pytest.mark.parametrize("name", ["from_file in forward", "getattr + string concatenation",
                                  "from_file in __setstate__", "save in forward", "save in __setstate__",
                                  "save in a submodule method"])
def test_with_vetting_off_the_sandbox_still_stops_it(name, base, secret, tmp_path, images):
    """The ops run (no allowlist), but the sandbox has no data dir to read and no host path to write:
    from_file fails, save writes nowhere (TorchScript's save ignores a file it cannot open)."""
    out = tmp_path / "written.pt"
    edits, _ = attacks(secret, out)[name]
    path = rewrite(base, tmp_path / "evil.pt", edits)
    try:
        done = sandboxed(path, images, secret, vet_ops=False)
        seen = json.dumps(done.report) + str(done.arrays["embeddings"].tolist())
        assert "save" in name, "from_file of the planted secret succeeded"
    except Exception as failed:  # noqa: BLE001 - however the op fails inside, it must not leak
        seen = str(failed)
        assert re.search("No such file|unable to open file", seen), seen
    assert SECRET not in seen and not out.exists()


def test_vetting_off_really_runs_the_ops(base, tmp_path, images, secret):
    """Control for the test above: the same from_file works in the sandbox on a file that is there."""
    edits = in_forward('torch.from_file("/input/images.npy", False, 16, dtype=0)')
    path = rewrite(base, tmp_path / "reads-input.pt", edits)
    z = sandboxed(path, images, secret, vet_ops=False).arrays["embeddings"]
    buf = io.BytesIO()
    np.save(buf, images)  # what the parent wrote to /input/images.npy
    header = float(np.frombuffer(buf.getvalue()[:16], np.uint8).sum())
    plain = sandboxed(base, images, secret).arrays["embeddings"]
    np.testing.assert_allclose(z - plain, np.full_like(z, header), rtol=1e-5)


def test_legitimate_models_pass(tmp_path, base):
    from worker.models.cifar import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "script.pt")
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 32, 32)), tmp_path / "trace.pt")
    for name in ("script.pt", "trace.pt"):
        loaded = load_vetted(tmp_path / name)
        assert check_module(loaded) >= 10  # every submodule's forward
    cu = torch._C.CompilationUnit()
    module = torch.jit._recursive.wrap_cpp_module(torch._C.import_ir_module(cu, str(base), None, {}, False))
    names = {f.qualified_name.rsplit(".", 2)[-2] + "." + f.name for f in cu.get_functions()}
    assert {"Net.forward", "Leaf.forward", "Leaf.__setstate__", "Leaf.__getstate__"} <= names
    check_module(module, cu)
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(load_encoder(tmp_path / "script.pt").module(x), model(x))


def test_denied_ops_cover_every_file_process_and_network_schema():
    """Re-derive the deny list from the installed torch: aten / prim schemas with a str file / path argument, an
    RRef, or rpc in the name. A new torch that adds one fails here until DENIED_OPS names it."""
    derived = set()
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.split("::")[0] not in ALLOWED_NAMESPACES:
            continue
        text = str(schema)
        file_arg = any(str(a.type) == "str" and re.search("file|path|dir", a.name) for a in schema.arguments)
        if file_arg or "RRef" in text or "rpc" in schema.name:
            derived.add(schema.name)
    assert {"aten::save", "aten::from_file", "prim::rpc_async", "aten::to_here"} <= derived
    assert derived <= DENIED_OPS, derived - DENIED_OPS
    assert issubclass(ForbiddenOp, ValueError)


# ---------------------------------------------------------------- torch.export: decided at upload, without torch


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    class Small(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x.flatten(1))

    path = tmp_path_factory.mktemp("pt2") / "small.pt2"
    torch.export.save(torch.export.export(Small(), (torch.randn(2, 3, 8, 8),)), path)
    return path


def export_with_target(src: Path, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                assert b"torch.ops.aten.relu.default" in data
                data = data.replace(b"torch.ops.aten.relu.default", target.encode())
            zout.writestr(info.filename, data)
    return buf.getvalue()


@pytest.mark.parametrize("target, words", [
    ("torch.ops.aten.save.default", "reads or writes files"),
    ("torch.ops.aten.from_file.default", "reads or writes files"),
    ("torch.ops.c10d.barrier.default", "only torch.ops.aten / prims"),
    ("torch.ops.debugprims.load_tensor.default", "only torch.ops.aten / prims"),
    ("torch.os.system", "only torch.ops.aten / prims"),
])  # fmt: skip
def test_export_graph_ops_are_refused_at_upload_with_the_op_named(target, words, export_file, api, run_id,
                                                                  settings, tmp_path):
    content = export_with_target(export_file, target)
    (tmp_path / "evil.pt2").write_bytes(content)
    with pytest.raises(UploadCheckpointError, match=re.escape(target)):
        inspect_checkpoint(tmp_path / "evil.pt2")
    response = upload(api, run_id, "evil.pt2", content, kind="checkpoint")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert target in detail and words in detail
    assert stored_files(settings) == [] and tmp_files(settings) == []
    with pytest.raises(CheckpointError, match=re.escape(target)):  # the worker's own check agrees
        load_encoder(tmp_path / "evil.pt2")


def test_a_clean_export_is_accepted_at_upload(export_file, api, run_id):
    response = upload(api, run_id, "small.pt2", export_file.read_bytes(), kind="checkpoint")
    assert response.status_code == 202, response.text
    assert response.json()["artifact"]["format"] == "export"
    assert json.loads(json.dumps(inspect_checkpoint(export_file).to_meta()))["format"] == "export"
