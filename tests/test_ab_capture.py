"""capture(ab=True): checkpointing on and off in one run, on real CPU captures of tiny
models checkpointed every way users do it (ckprof.checkpoint, reentrant, selective,
torch's checkpoint bound before the capture like HF, checkpoint_wrapper, a tiny HF
model), and the out-of-memory path (simulated: the CPU path is the same code)."""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import pytest
from support.capture import read_trace

torch = pytest.importorskip("torch")

import ckprof  # noqa: E402
from ckprof.analysis import load  # noqa: E402
from ckprof.capture.ab import SWITCH, checkpointing  # noqa: E402
from ckprof.errors import CaptureError  # noqa: E402

DIM = 16
BATCH = 256  # activations (256 x 64 floats per block layer) outweigh the weights
#: block forward calls per variant and step: a checkpointed block runs twice
CALLS = Counter()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(DIM, 4 * DIM)
        self.fc2 = torch.nn.Linear(4 * DIM, DIM)

    def forward(self, x: Any) -> Any:
        CALLS["block"] += 1
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Net(torch.nn.Module):
    def __init__(self, ckpt: Any = None, depth: int = 2) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(DIM, DIM)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(depth))
        self.ckpt = ckpt

    def forward(self, x: Any) -> Any:
        x = self.inp(x)
        for b in self.blocks:
            x = b(x) if self.ckpt is None else self.ckpt(b, x)
        return x.square().mean()


def _sac() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op is torch.ops.aten.addmm.default else CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


def make(way: str) -> torch.nn.Module:
    """A Net whose blocks are checkpointed ``way``; torch's checkpoint is bound NOW,
    before any capture (as HF and checkpoint_wrapper do at import)."""
    import torch.utils.checkpoint as tcp

    torch.manual_seed(0)
    if way == "wrapper":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            checkpoint_wrapper,
        )

        net = Net()
        net.blocks = torch.nn.ModuleList(checkpoint_wrapper(b, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
                                         for b in net.blocks)
        return net
    ckpt = {
        "ckprof": ckprof.checkpoint,
        "reentrant": functools.partial(tcp.checkpoint, use_reentrant=True),
        "sac": functools.partial(tcp.checkpoint, use_reentrant=False, context_fn=_sac()),
        "bound": functools.partial(tcp.checkpoint, use_reentrant=False),
    }[way]
    return Net(ckpt)


def run_ab(tmp_path: Any, model: torch.nn.Module, *, active: int = 4, batch: Any = None,
           loss: Any = None) -> tuple[Any, dict[int, int]]:
    """Capture wait=0, warmup=1, active steps with ab=True through run_step; return the
    capture and the block calls of every step (the ground truth)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, DIM) if batch is None else batch
    calls: dict[int, int] = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (model(x) if loss is None else loss(model, x)).backward()
        opt.step()

    with ckprof.capture(tmp_path, wait=0, warmup=1, active=active, ab=True) as cap:
        for _ in range(active + 1):
            before = CALLS["block"]
            index = cap.step_index
            cap.run_step(step)
            calls[index] = CALLS["block"] - before
    return cap, calls


@pytest.mark.parametrize("way", ["ckprof", "reentrant", "sac", "bound", "wrapper"])
def test_ab_alternates_checkpointing_every_way(tmp_path, way):
    """GIVEN blocks checkpointed `way` WHEN captured with ab=True THEN active steps run
    on, off, off, on; on steps run each block twice (forward + recompute) and show
    recompute, off steps run it once and show none; the trace tags every step inside
    its ProfilerStep and the analysis reports a positive saving."""
    cap, calls = run_ab(tmp_path, make(way))
    assert len(cap.trace_paths) == 1, cap.errors
    raw = read_trace(cap.trace_paths[0])
    meta = raw["ckprof"]["ab"]
    assert meta["steps"] == {"1": "on", "2": "off", "3": "off", "4": "on"} and meta["off_fits"]
    assert [calls[s] for s in (1, 2, 3, 4)] == [4, 2, 2, 4]
    assert calls[0] == 2  # the warm-up step runs "off"
    tags = sorted((e["ts"], e["name"]) for e in raw["traceEvents"]
                  if str(e.get("name", "")).startswith(("ProfilerStep#", "ckprof::variant::")))
    assert [n for _, n in tags] == ["ProfilerStep#1", "ckprof::variant::on", "ProfilerStep#2",
                                    "ckprof::variant::off", "ProfilerStep#3", "ckprof::variant::off",
                                    "ProfilerStep#4", "ckprof::variant::on"]
    analysis = load(cap.trace_paths[0])
    ab = analysis.ab
    steps = ab.steps.set_index("step")
    assert (steps.loc[[1, 4], "recompute_ms"] > 0).all() and (steps.loc[[2, 3], "recompute_ms"] == 0).all()
    assert ab.diff.saving_bytes > 0
    assert SWITCH.off is False  # switched back on after the capture


def test_checkpointing_off_changes_no_numbers():
    """GIVEN the same weights and input WHEN one step runs with checkpointing on and one
    with it off THEN loss and gradients are equal (off only drops the recompute)."""
    grads = []
    for on in (True, False):
        model = make("ckprof")
        x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(3))
        with ckprof.instrument_checkpointing(), checkpointing(on):
            loss = model(x)
            loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1], strict=True))


def test_ab_with_a_tiny_hf_model(tmp_path):
    """GIVEN a tiny HF Llama (from a config, no download) with gradient checkpointing
    enabled before the capture WHEN captured with ab=True THEN on steps recompute every
    decoder layer and off steps none, and the saving is positive."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    ids = torch.randint(0, 64, (2, 16))
    cap, _ = run_ab(tmp_path, model, batch=ids, loss=lambda m, x: m(input_ids=x, labels=x).loss)
    ab = load(cap.trace_paths[0]).ab
    steps = ab.steps.set_index("step")
    assert (steps.loc[[1, 4], "recompute_ms"] > 0).all() and (steps.loc[[2, 3], "recompute_ms"] == 0).all()
    assert ab.diff.saving_bytes > 0


# ---- out of memory in an "off" step ------------------------------------------------------


class SavedBytesBudget:
    """Raise torch.OutOfMemoryError when the activations a forward keeps exceed a
    budget: checkpointed blocks keep theirs inside checkpoint (their hooks are
    innermost), so only "off" steps go over -- a CPU stand-in for a GPU running out."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0

    def pack(self, t: Any) -> Any:
        self.used += t.numel() * t.element_size()
        if self.used > self.budget:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB (simulated)")
        return t

    def __call__(self, model: Any, x: Any) -> Any:
        self.used = 0
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            return model(x)


def on_step_budget(model: Any, x: Any) -> int:
    """Bytes of activations a checkpointed ("on") forward keeps outside checkpoint, plus
    a little: a budget that fits "on" steps and not "off" ones."""
    meter = SavedBytesBudget(1 << 60)
    with ckprof.instrument_checkpointing():
        meter(model, x)
    return meter.used + 64


def test_oom_in_off_step_is_reported_and_training_continues(tmp_path):
    """GIVEN a step that only fits with checkpointing WHEN captured with ab=True through
    run_step THEN the first off step's out-of-memory is caught, the step is rerun with
    checkpointing and every later step runs on; every step trained once (optimizer
    steps = steps) and the analysis says 'without checkpointing this step does not fit'."""
    model = make("ckprof")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, DIM)
    budget = SavedBytesBudget(on_step_budget(model, x))
    opt_steps = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        budget(model, x).backward()
        opt.step()
        opt_steps.append(1)

    with pytest.warns(ckprof.capture.CaptureWarning, match="does not fit"), \
            ckprof.capture(tmp_path, wait=0, warmup=2, active=4, ab=True) as cap:
        for _ in range(6):
            cap.run_step(step)
    assert len(opt_steps) == 6 and len(cap.trace_paths) == 1
    assert [o["step"] for o in cap.ab_oom] == [1] and not cap.ab_oom[0]["recorded"]  # a warm-up step
    meta = read_trace(cap.trace_paths[0])["ckprof"]["ab"]
    assert not meta["off_fits"] and set(meta["steps"].values()) == {"on"}
    from ckprof.report.tables import render

    text = render(load(cap.trace_paths[0]))
    assert "Without checkpointing this step does not fit: step 1 ran out of memory" in text


def test_oom_in_a_recorded_off_step_excludes_it(tmp_path):
    """GIVEN an out-of-memory in a RECORDED off step (profile_step decorator) WHEN the
    window is saved THEN that step carries the oom tag and is excluded; the on steps
    still give figures."""
    model = make("ckprof")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, DIM)
    tight = on_step_budget(model, x)
    budget = SavedBytesBudget(1 << 60)

    @ckprof.profile_step(tmp_path, wait=0, warmup=1, active=4, ab=True)
    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        budget.budget = tight if i == 2 else 1 << 60  # step 2: the first recorded off step
        budget(model, x).backward()
        opt.step()

    with pytest.warns(ckprof.capture.CaptureWarning):
        for i in range(5):
            step(i)
    analysis = load(step.trace_paths[0])
    ab = analysis.ab
    assert ab.steps.set_index("step").loc[2, "excluded"] and not ab.baseline_fits
    assert ab.variants.set_index("variant").loc["on", "steps"] >= 2


def test_oom_in_a_plain_with_loop_keeps_completed_steps(tmp_path):
    """GIVEN a plain with-loop (no run_step) WHEN an off step runs out of memory THEN the
    error propagates (the loop cannot be rerun) and the completed steps are saved with
    the out-of-memory recorded."""
    model = make("ckprof")
    budget = SavedBytesBudget(1 << 60)
    x = torch.randn(BATCH, DIM)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(ckprof.capture.CaptureWarning), \
            ckprof.capture(tmp_path, wait=0, warmup=1, active=4, ab=True) as cap:
        for i in range(5):
            budget.budget = 64 if i == 2 else 1 << 60
            budget(model, x).backward()
            cap.step()
    assert len(cap.trace_paths) == 1
    meta = read_trace(cap.trace_paths[0])["ckprof"]["ab"]
    assert meta["oom"][0]["step"] == 2 and 2 in meta["excluded"]
    assert SWITCH.off is False


def test_other_errors_propagate_unchanged(tmp_path):
    """GIVEN a step raising something else than out-of-memory in an off step WHEN run
    through run_step THEN it propagates as is and nothing is rerun."""
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"), ckprof.capture(tmp_path, wait=0, warmup=1, active=2, ab=True) as cap:
        cap.run_step(step)
    assert calls == [1]


def test_ab_needs_two_active_steps_and_tag_step_needs_manual_mode(tmp_path):
    """GIVEN ab=True with active=1 WHEN built THEN a typed error; tag_step is refused
    when ab=True tags the steps itself."""
    with pytest.raises(CaptureError, match="at least 2 active"):
        ckprof.capture(tmp_path, active=1, ab=True)
    with ckprof.capture(tmp_path, wait=0, warmup=0, active=2, ab=True) as cap, \
            pytest.raises(CaptureError, match="tags steps itself"):
        cap.tag_step("x")


def test_wait_steps_alternate_and_are_timed_without_the_profiler(tmp_path):
    """GIVEN ab=True with wait=5 WHEN captured THEN the wait steps run on, off, off, on,
    on (block calls per step are the ground truth), steps 1-4 are timed (the first of the
    block is not) and stored in the metadata, and the analysis gives the unprofiled cost."""
    model = make("ckprof")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, DIM)
    calls = {}

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).backward()
        opt.step()

    with ckprof.capture(tmp_path, wait=5, warmup=1, active=2, ab=True) as cap:
        for _ in range(8):
            before, index = CALLS["block"], cap.step_index
            cap.run_step(step)
            calls[index] = CALLS["block"] - before
    assert [calls[s] for s in range(5)] == [4, 2, 2, 4, 4]
    timed = read_trace(cap.trace_paths[0])["ckprof"]["ab"]["unprofiled"]
    assert [(s, v) for s, v, _ in timed] == [(1, "off"), (2, "off"), (3, "on"), (4, "on")]
    assert all(ms > 0 for _, _, ms in timed)
    d = load(cap.trace_paths[0]).ab.diff
    assert d.unprofiled_steps == (2, 2) and not math.isnan(d.unprofiled_cost_pct)
