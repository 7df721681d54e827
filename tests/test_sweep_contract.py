"""The --model contract of `ckprof sweep` (tensor, (x, y), dict/HF batches; one-line
errors) and the sweep's out-of-memory paths (a policy that does not fit; confirming the
recommended batch), on tiny CPU models; out-of-memory is simulated (same code as GPU)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from ckprof.cli.main import cli  # noqa: E402
from ckprof.strategy.contract import UserCodeError, build_workload, default_loss  # noqa: E402
from ckprof.strategy.policies import Policy  # noqa: E402
from ckprof.strategy.runner import confirm_batch, sweep  # noqa: E402

DIM = 16
HERE = __name__


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    """forward(x) only: a (x, y) batch must not be spread into it."""

    def __init__(self, classes: int = 5, limit: int | None = None, fail: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(DIM, DIM), nn.GELU()) for _ in range(3))
        self.head = nn.Linear(DIM, classes)
        self.limit = limit  # simulated device: batches above it run out of memory
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom in the user's forward")
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: batch {x.shape[0]} > {self.limit})")
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def build_xy(batch_size: int = 8):
    """(x, y) with integer class targets, no loss: the default is cross entropy."""
    return Net(), (torch.randn(batch_size, DIM), torch.randint(0, 5, (batch_size,))), None


def build_failing(batch_size: int = 8):
    return Net(fail=True), (torch.randn(batch_size, DIM), torch.randint(0, 5, (batch_size,))), None


def build_broken(batch_size: int = 8):
    return {}["no such key"]


def build_three(batch_size: int = 8):
    return Net(), (torch.randn(batch_size, DIM), torch.randn(batch_size, DIM), torch.randn(batch_size)), None


def build_limited(batch_size: int = 8):
    return Net(limit=33), torch.randn(batch_size, DIM), None


# ---- the contract, called directly (fast) -----------------------------------------------


def test_tuple_batch_calls_model_with_inputs_and_loss_with_the_batch():
    """GIVEN build returning (x, y) and no loss WHEN a step runs THEN the model gets x
    alone and the loss is cross entropy against y (computed here independently)."""
    work = build_workload(build_xy, None, None, 8, name=f"{HERE}:build_xy")
    assert work.batch_size == 8
    x, y = work.batch
    expected = F.cross_entropy(work.model(x), y)
    assert torch.allclose(work.forward_loss(), expected)


def test_dict_batch_goes_as_keywords_and_hf_loss_is_used():
    """GIVEN a tiny HF model and a dict batch with labels WHEN the loss is computed THEN
    the model is called with **batch and its own output.loss is the loss."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 8))
    work = build_workload(lambda: (model, {"input_ids": ids, "labels": ids}, None), None, None, None, name="hf")
    assert work.batch_size == 2
    assert torch.allclose(work.forward_loss(), model(input_ids=ids, labels=ids).loss)


def test_default_loss_shapes():
    """GIVEN outputs and targets of the common shapes WHEN the default loss is taken
    THEN: scalar output itself; same-shape float target -> MSE; no target -> mean of
    squares."""
    out = torch.randn(4, 3)
    assert default_loss(out.sum(), out) is not None and torch.equal(default_loss(out.sum(), None), out.sum())
    y = torch.randn(4, 3)
    assert torch.allclose(default_loss(out, (None, y)), F.mse_loss(out, y))
    assert torch.allclose(default_loss(out, out), out.square().mean())


@pytest.mark.parametrize(("build", "needle"), [
    ("build_failing", "model(x) with batch = (x, y) failed: RuntimeError: boom in the user's forward "
                      "(at test_sweep_contract.py:"),
    ("build_broken", "build(batch_size=8) failed: KeyError: 'no such key' (at test_sweep_contract.py:"),
    ("build_three", "the batch is a tuple of 3 elements"),
])
def test_errors_in_user_code_are_one_line(build, needle):
    """GIVEN a model / build that fails WHEN `ckprof sweep --model` runs THEN exit 1 and a
    single line naming the function and the call that failed, no traceback."""
    res = CliRunner().invoke(cli, ["sweep", "--model", f"{HERE}:{build}", "--policy", "none", "--steps", "1",
                                   "--rounds", "1", "--warmup", "0", "--batch-size", "8"])
    # (--warmup 0: the first call of the model happens inside the sweep's capture)
    assert res.exit_code == 1, res.output
    err = [line for line in res.output.splitlines() if line.startswith("ckprof: error:")]
    assert len(err) == 1 and f"{HERE}:{build}" in err[0] and needle in err[0], res.output
    assert "Traceback" not in res.output and "Warning" not in res.output


def test_user_error_keeps_the_original_for_python_users():
    """GIVEN the Python API WHEN the user's forward fails THEN UserCodeError, whose
    __cause__ is the user's exception (traceback available)."""
    with pytest.raises(UserCodeError) as info:
        build_workload(build_failing, None, None, 8).forward_loss()
    assert isinstance(info.value.__cause__, RuntimeError)


# ---- sweeps with the contract and out of memory ------------------------------------------


def test_cli_sweep_tuple_model_runs():
    """GIVEN the (x, y) model of the issue (a 40-line TypeError before) WHEN swept THEN it
    measures both policies."""
    res = CliRunner().invoke(cli, ["sweep", "--model", f"{HERE}:build_xy", "--policy", "none,full", "--steps", "1",
                                   "--rounds", "1", "--warmup", "0", "--format", "json", "--optimizer", "sgd"])
    assert res.exit_code == 0, res.output
    assert "policies" in res.output and "full" in res.output


class SavedBudgetNet(Net):
    """Runs out of memory (simulated) when its forward keeps more activations than a
    budget outside checkpointed blocks: 'none' does not fit, checkpointing does."""

    budget = 0

    def forward(self, x):
        used = [0]

        def pack(t):
            used[0] += t.numel() * t.element_size()
            if used[0] > self.budget:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return super().forward(x)


def build_budgeted(batch_size: int = 64):
    model = SavedBudgetNet()
    x = torch.randn(batch_size, DIM)
    # what 'full' keeps outside its checkpoints: each block's input (checkpoint saves it)
    # and the head's input and weight; 'none' keeps every activation inside the blocks too
    model.budget = 4 * batch_size * DIM * 4 + 4096
    return model, x, None


def test_policy_that_does_not_fit_is_reported_and_the_sweep_goes_on():
    """GIVEN 'none' running out of memory WHEN swept THEN it is reported as not fitting
    (left out of later rounds) and 'full' is still measured."""
    result = sweep(build_budgeted, policies=["none", "full"], steps=2, rounds=2, warmup=1, optimizer="sgd")
    assert [f["policy"] for f in result.failed] == ["none"]
    assert "OutOfMemoryError" in result.failed[0]["error"]
    assert list(result.table["policy"]) == ["full"] and result.table.iloc[0]["recompute_ms"] > 0
    assert "none at batch 64 does not fit: it ran out of memory" in result.render()


def test_confirm_batch_steps_down_until_it_fits(tmp_path):
    """GIVEN a device that fits batch 33 at most WHEN batch 36 is confirmed THEN 36 runs
    out of memory and 32 (10% less) runs: status reduced, what ran is measured; GIVEN a
    budget below any peak THEN failed, saying it is over the budget."""
    spec = {"make_model": build_limited, "make_batch": None, "loss_fn": None, "device": "cpu",
            "optimizer": "sgd", "threads": 1, "out_dir": str(tmp_path)}
    conf = confirm_batch(spec, Policy.full(), 36, budget_bytes=2**40)
    assert conf["status"] == "reduced" and conf["batch_size"] == 32
    assert [t["batch_size"] for t in conf["tries"]] == [36, 32]
    assert "ran out of memory" in conf["reason"] and conf["samples_per_s"] > 0 and conf["peak_bytes"] > 0
    too_small = confirm_batch(spec, Policy.full(), 16, budget_bytes=1024, attempts=1)
    assert too_small["status"] == "failed" and "over the budget" in too_small["reason"]
