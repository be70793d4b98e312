"""Training-loop integrations drive real training (Lightning Trainer; a transformers model stepped by hand
with real TrainerState objects) and must log the probe set's embeddings at the right steps, as computed by
the final weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.unit.test_client import client  # noqa: F401  (fixture: repscope.Client over the real app)


def stored(api, run_id: int) -> dict[int, np.ndarray]:
    out = {}
    for artifact in api.get(f"/api/v1/runs/{run_id}/artifacts").json():
        data = api.get(f"/api/v1/artifacts/{artifact['id']}/file").content
        out[artifact["step"]] = np.load(io.BytesIO(data))["embeddings"]
    return out


def test_lightning_callback_logs_every_n_steps(api, client):  # noqa: F811
    lightning = pytest.importorskip("lightning")
    from repscope.integrations.lightning import RepscopeCallback

    class Encoder(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(6, 4)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.net(x)

        def training_step(self, batch, _):  # noqa: ANN001, ANN201
            return self(batch[0]).pow(2).mean()

        def configure_optimizers(self):  # noqa: ANN201
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6))
    probe, labels = torch.randn(20, 6), np.arange(20) % 2
    run = client().run(project="integrations", name="lightning")
    callback = RepscopeCallback(run, [probe[:10], probe[10:]], labels=labels, every_n_steps=3)
    model = Encoder()
    trainer = lightning.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    for upload in callback.logger.uploads:
        upload.result()  # raises the server's refusal, if any
    logged = stored(api, run.id)
    assert sorted(logged) == [0, 3, 6, 7]  # start, every 3 steps, and the end
    with torch.no_grad():
        np.testing.assert_allclose(logged[7], model(probe).numpy(), rtol=1e-6)
    assert logged[0].shape == (20, 4)


def test_transformers_callback_logs_cls_embeddings(api, client):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, TrainerControl, TrainerState

    from repscope.integrations.huggingface import RepscopeTrainerCallback

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=16))
    batch = {"input_ids": torch.randint(0, 50, (12, 8)), "attention_mask": torch.ones(12, 8, dtype=torch.long)}
    run = client().run(project="integrations", name="bert")
    callback = RepscopeTrainerCallback(run, [batch], labels=np.arange(12) % 3, every_n_steps=2)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control, model=model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for step in range(1, 5):
        optimizer.zero_grad()
        model(**batch).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        state.global_step = step
        callback.on_step_end(None, state, control, model=model)
    assert model.training  # put back in train mode after each embedding pass
    callback.on_train_end(None, state, control, model=model)
    logged = stored(api, run.id)
    assert sorted(logged) == [0, 2, 4]
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(logged[4], model(**batch).last_hidden_state[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert transformers.__version__
