"""The framework callbacks against the real frameworks: a tiny Llama from a config under
the Hugging Face Trainer (gradient_checkpointing=True), a tiny LightningModule under
Lightning's Trainer; CPU, a few steps each."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from support.raw_reference import ranges_per_step

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- transformers


def _hf_trainer(tmp_path: Path, callback: object, max_steps: int, accumulation: int = 1):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    data = [{"input_ids": torch.randint(0, 64, (16,)), "labels": torch.randint(0, 64, (16,))}
            for _ in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf_out"), max_steps=max_steps, per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation, gradient_checkpointing=True, report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    return transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])


def test_hf_trainer_callback(tmp_path: Path) -> None:
    """GIVEN a tiny Llama (2 layers, from a config) trained by the HF Trainer with
    gradient_checkpointing=True and gradient accumulation 2, and CkprofCallback(wait=1,
    warmup=1, active=2) as its one added line
    WHEN it trains 5 steps THEN one trace holds steps 2 and 3, each with one optimizer
    step and two forward passes (the accumulation), every decoder layer is a region
    named after its module and recomputed twice per step, and the analysis was logged
    once, at the end of the window."""
    from ckprof.integrations.transformers import CkprofCallback

    logged: list[str] = []
    callback = CkprofCallback(tmp_path / "traces", wait=1, warmup=1, active=2, log=logged.append)
    _hf_trainer(tmp_path, callback, max_steps=5, accumulation=2).train()
    (trace,) = callback.trace_paths
    assert ranges_per_step(trace, "Optimizer.step#") == {2: 1, 3: 1}
    assert ranges_per_step(trace, "ckprof::recompute::model.layers.0") == {2: 2, 3: 2}
    assert ranges_per_step(trace, "ckprof::recompute::model.layers.1") == {2: 2, 3: 2}
    assert len(logged) == 1 and str(trace) in logged[0]
    assert "model.layers.0" in callback.analysis and "2 step(s) analysed (2, 3)" in callback.analysis


def test_hf_trainer_too_short_says_why(tmp_path: Path) -> None:
    """GIVEN the callback's default window (steps 2-4) and a run of 2 steps
    WHEN training ends THEN no trace, and the reason is logged."""
    from ckprof.integrations.transformers import CkprofCallback

    logged: list[str] = []
    callback = CkprofCallback(tmp_path / "traces", log=logged.append)
    _hf_trainer(tmp_path, callback, max_steps=2).train()
    assert callback.trace_paths == []
    assert len(logged) == 1 and "no trace written" in logged[0] and "only 2 step(s)" in logged[0]


# ----------------------------------------------------------------------------- lightning


def test_lightning_callback(tmp_path: Path) -> None:
    """GIVEN a LightningModule checkpointing its 2 blocks with torch.utils.checkpoint,
    accumulate_grad_batches=2, and CkprofCallback(wait=1, warmup=1, active=2)
    WHEN Trainer.fit runs 5 optimizer steps THEN one trace holds steps 2 and 3, each
    with one optimizer step, two forward and two backward passes and both blocks
    recomputed twice; the forward Lightning runs inside optimizer.step (its closure) is
    marked forward; the analysis was logged once."""
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.checkpoint import checkpoint

    from ckprof.integrations.lightning import CkprofCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(16, 16)
            self.blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU()) for _ in range(2))
            self.head = torch.nn.Linear(16, 1)

        def forward(self, x):
            x = self.inp(x)
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return self.head(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randn(64, 1)), batch_size=4)
    logged: list[str] = []
    callback = CkprofCallback(tmp_path / "traces", wait=1, warmup=1, active=2, fmt="json",
                              log=logged.append)
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accumulate_grad_batches=2,
                         callbacks=[callback], default_root_dir=str(tmp_path))
    trainer.fit(Net(), data)
    (trace,) = callback.trace_paths
    assert ranges_per_step(trace, "Optimizer.step#SGD") == {2: 1, 3: 1}
    assert ranges_per_step(trace, "ckprof::backward") == {2: 2, 3: 2}
    for block in ("blocks.0", "blocks.1"):
        assert ranges_per_step(trace, f"ckprof::recompute::{block}") == {2: 2, 3: 2}
    assert ranges_per_step(trace, "ckprof::forward") == {2: 2, 3: 2}
    # the forward of the batch that steps runs inside optimizer.step (Lightning's
    # closure) and is marked forward there, before the optimizer's own update
    with gzip.open(trace, "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    steps_ranges = [e for e in events if e["name"].startswith("Optimizer.step#SGD")]
    forwards = [e for e in events if e["name"] == "ckprof::forward"]
    inside = [f for f in forwards for o in steps_ranges if o["ts"] <= f["ts"] < o["ts"] + o["dur"]]
    assert len(inside) == 2
    assert len(logged) == 1
    doc = json.loads(callback.analysis)
    assert doc["steps_analyzed"] == [2, 3]
