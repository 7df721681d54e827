"""ckprof.checkpoint and instrument_checkpointing: markers, numerics, restoration."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import torch.utils.checkpoint as tcp  # noqa: E402
from support.capture import TinyNet, _sac_context_fn, one_torch_thread  # noqa: E402

import ckprof  # noqa: E402
from ckprof.capture import regions  # noqa: E402

REGIONS = ("blocks.0", "blocks.1", "blocks.2")



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def marker_counts(fn: Callable[[], Any]) -> Counter[str]:
    """Run fn under a plain torch profiler; count the ckprof:: ranges it recorded."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if e.name.startswith("ckprof::"))


def grads_of(ckpt: Any, *, seed: int = 0) -> tuple[Any, list[Any]]:
    torch.manual_seed(seed)
    model = TinyNet()
    model.ckpt = ckpt
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _fresh_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regions, "NAMES", regions._RegionNames())


def expected(recompute: int = 1) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in REGIONS:
        out[f"ckprof::checkpoint::{r}"] = 1
        out[f"ckprof::recompute::{r}"] = recompute
    return out


def root_known(model: Any) -> None:
    regions.NAMES.add_root(model)


def run_model(ckpt: Any, *, retain: bool = False, backward_twice: bool = False,
              use_grad: bool = False) -> Callable[[], None]:
    torch.manual_seed(0)
    model = TinyNet()
    model.ckpt = ckpt
    root_known(model)
    x = torch.randn(4, 64)

    def go() -> None:
        loss = model(x).square().mean()
        if use_grad:
            torch.autograd.grad(loss, list(model.parameters()))
        elif backward_twice:
            loss.backward(retain_graph=True)
            loss.backward()
        else:
            loss.backward()

    return go


# ------------------------------------------------------------------------ numerics


@pytest.mark.parametrize(
    ("name", "ours", "theirs"),
    [
        ("non_reentrant", ckprof.checkpoint, functools.partial(tcp.checkpoint, use_reentrant=False)),
        ("reentrant", functools.partial(ckprof.checkpoint, use_reentrant=True),
         functools.partial(tcp.checkpoint, use_reentrant=True)),
        ("sac", functools.partial(ckprof.checkpoint, context_fn=_sac_context_fn()),
         functools.partial(tcp.checkpoint, use_reentrant=False, context_fn=_sac_context_fn())),
    ],
)
def test_gradients_identical_with_markers_recording(name: str, ours: Any, theirs: Any) -> None:
    """GIVEN the same seeded model run with torch's checkpoint and with ckprof.checkpoint
    WHEN both run forward+backward while a profiler records (markers on)
    THEN loss and every gradient are bitwise identical, and also equal to no checkpointing."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        loss_a, grads_a = grads_of(ours)
    loss_b, grads_b = grads_of(theirs)
    loss_c, grads_c = grads_of(None)
    assert torch.equal(loss_a, loss_b) and torch.equal(loss_a, loss_c)
    for a, b, c in zip(grads_a, grads_b, grads_c, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


# ------------------------------------------------------------------------- markers


@pytest.mark.parametrize(
    "ckpt",
    [
        ckprof.checkpoint,
        functools.partial(ckprof.checkpoint, use_reentrant=True),
        functools.partial(ckprof.checkpoint, context_fn=_sac_context_fn()),
    ],
    ids=["non_reentrant", "reentrant", "sac"],
)
def test_one_checkpoint_and_one_recompute_per_region(ckpt: Any) -> None:
    """GIVEN a 3-block model checkpointed per block through ckprof.checkpoint
    WHEN one forward+backward runs under a profiler
    THEN each block has one checkpoint range and one recompute range, named by its
    qualified name in the model."""
    assert marker_counts(run_model(ckpt)) == expected()


def test_recompute_once_per_backward() -> None:
    """GIVEN backward(retain_graph=True) then backward() on one forward
    WHEN markers are counted
    THEN each region is recomputed once per backward (twice), forward-run once."""
    assert marker_counts(run_model(ckprof.checkpoint, backward_twice=True)) == expected(recompute=2)


def test_autograd_grad_recomputes_once() -> None:
    """GIVEN torch.autograd.grad instead of backward
    WHEN markers are counted
    THEN each region is recomputed exactly once."""
    assert marker_counts(run_model(ckprof.checkpoint, use_grad=True)) == expected()


def test_early_stop_closes_recompute_range_and_keeps_grads() -> None:
    """GIVEN a region whose last op's output is not needed by backward (early stop
    triggers before the function ends) and a function that records how far it ran
    WHEN backward runs with early stop on and off
    THEN the recompute range exists in both cases, early stop cuts the rerun short
    (torch's _StopRecomputationError passes through our context), grads are equal."""
    calls: list[str] = []

    def fn(x: Any) -> Any:
        calls.append("start")
        y = torch.sin(x) * 2
        calls.append("after_mul")
        z = y.exp()  # exp saves its output: recompute must run up to here
        calls.append("end")
        return z + 1.0

    def run(early_stop: bool) -> tuple[Counter[str], list[str], Any]:
        calls.clear()
        x = torch.randn(5, requires_grad=True)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            x = torch.randn(5, requires_grad=True)

        def go() -> None:
            out = ckprof.checkpoint(fn, x, early_stop=early_stop, name="tail")
            out.sum().backward()

        counts = marker_counts(go)
        return counts, list(calls), x.grad.clone()

    counts_on, calls_on, grad_on = run(True)
    counts_off, calls_off, grad_off = run(False)
    want = Counter({"ckprof::checkpoint::tail": 1, "ckprof::recompute::tail": 1})
    assert counts_on == want and counts_off == want
    assert calls_off == ["start", "after_mul", "end"] * 2
    assert calls_on == ["start", "after_mul", "end", "start", "after_mul"]
    assert torch.equal(grad_on, grad_off)


def test_no_markers_and_no_wrapping_without_profiler() -> None:
    """GIVEN no profiler recording
    WHEN ckprof.checkpoint runs
    THEN torch's checkpoint receives the user's context_fn unchanged (no wrapper)."""
    seen: list[Any] = []
    real = tcp.checkpoint

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("context_fn", tcp.noop_context_fn))
        return real(fn, *args, **kwargs)

    ctx = _sac_context_fn()
    tcp.checkpoint = spy
    try:
        x = torch.randn(3, requires_grad=True)
        ckprof.checkpoint(torch.sin, x, context_fn=ctx).sum().backward()
    finally:
        tcp.checkpoint = real
    assert seen == [ctx]


def test_region_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN modules with and without a known root, bound methods, partials, functions
    WHEN region names are derived
    THEN modules get their qualified name under a known root, else Class+index (stable
    per module), methods other than forward add their name, functions their qualname,
    and repeats within one forward pass get #k suffixes when counting is on."""
    _fresh_names(monkeypatch)
    names = regions.NAMES
    model = TinyNet()
    lone_a, lone_b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert regions.region_name(lone_a) == "Linear0"
    assert regions.region_name(lone_b) == "Linear1"
    assert regions.region_name(lone_a) == "Linear0"
    names.add_root(model)
    assert regions.region_name(model.blocks[1]) == "blocks.1"
    assert regions.region_name(model.blocks[2].__call__) == "blocks.2"
    assert regions.region_name(model.blocks[2].forward) == "blocks.2"
    assert regions.region_name(functools.partial(model.blocks[0])) == "blocks.0"
    assert regions.region_name(model.blocks[0].fc1.extra_repr) == "blocks.0.fc1.extra_repr"

    def custom_forward(x: Any) -> Any:
        return x

    assert regions.region_name(custom_forward) == "test_region_names.custom_forward"
    names.count_occurrences = True
    assert [names.unique("f"), names.unique("f"), names.unique("g")] == ["f", "f#1", "g"]


def test_region_names_look_through_partials_wrappers_and_wrapped_modules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN the callables real code hands to checkpoint: HF >= 5's
    ``partial(Layer.forward, layer, **kwargs)``, a ``functools.wraps`` wrapper around
    it, a checkpoint_wrapper-ed block, checkpoint_sequential's segment closure
    WHEN region names are derived
    THEN each is the module path a user sees (no ``_checkpoint_wrapped_module``), a
    checkpoint_sequential segment is ``<sequential>[start:end]``, and a checkpoint
    called inside backward (a nested re-run) is not counted as a new occurrence."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    _fresh_names(monkeypatch)
    names = regions.NAMES
    model = TinyNet()
    model.blocks[2] = checkpoint_wrapper(model.blocks[2])
    body = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    model.body = body
    names.add_root(model)
    hf_style = functools.partial(type(model.blocks[0]).forward, model.blocks[0], scale=2)
    assert regions.region_name(hf_style) == "blocks.0"

    @functools.wraps(hf_style)
    def timed(*args: Any, **kwargs: Any) -> Any:
        return hf_style(*args, **kwargs)

    assert regions.region_name(timed) == "blocks.0"
    assert regions.region_name(functools.partial(functools.partial(timed))) == "blocks.0"
    inner = model.blocks[2]._checkpoint_wrapped_module
    assert regions.region_name(inner) == "blocks.2"
    segments: list[str] = []
    real = torch.utils.checkpoint.checkpoint

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        segments.append(regions.region_name(fn))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    torch.utils.checkpoint.checkpoint_sequential(body, 2, torch.ones(1, 2, requires_grad=True),
                                                 use_reentrant=False)
    assert segments == ["body[0:2]"]
    names.count_occurrences = True
    monkeypatch.setattr(regions, "_graph_task_id", lambda: 3)  # as inside backward
    assert [names.unique("f"), names.unique("f")] == ["f", "f"]


def test_explicit_name_and_sanitising() -> None:
    """GIVEN ckprof.checkpoint(..., name="enc::layer 1")
    WHEN markers are counted
    THEN the region name has '::' replaced so the marker parses back uniquely."""
    x = torch.randn(3, requires_grad=True)
    counts = marker_counts(lambda: ckprof.checkpoint(torch.sin, x, name="enc::layer 1").sum().backward())
    assert counts == Counter({"ckprof::checkpoint::enc.layer 1": 1, "ckprof::recompute::enc.layer 1": 1})


# ----------------------------------------------------------- instrument_checkpointing


def _originals() -> tuple[Any, Any]:
    return tcp._checkpoint_without_reentrant_generator, tcp.CheckpointFunction


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_instrument_reaches_partials_bound_earlier(reentrant: bool) -> None:
    """GIVEN torch checkpoint bound in a functools.partial BEFORE instrumenting (HF style)
    WHEN the model runs inside instrument_checkpointing under a profiler
    THEN every region gets its checkpoint and recompute markers; outside, none."""
    bound = functools.partial(tcp.checkpoint, use_reentrant=reentrant)
    go = run_model(bound)
    assert marker_counts(go) == Counter()
    with ckprof.instrument_checkpointing():
        counts = marker_counts(go)
    assert counts == expected()


def test_instrument_reaches_checkpoint_wrapper() -> None:
    """GIVEN blocks wrapped with torch.distributed's checkpoint_wrapper (binds checkpoint
    at import time) WHEN run inside instrument_checkpointing THEN markers appear, named
    by the wrapped module's qualified path."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    torch.manual_seed(0)
    model = TinyNet()
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)
    root_known(model)
    x = torch.randn(4, 64)
    with ckprof.instrument_checkpointing():
        counts = marker_counts(lambda: model(x).sum().backward())
    assert counts and all(v == 1 for v in counts.values())
    assert len(counts) == 2 * len(REGIONS)
    assert all(k.split("::")[-1].startswith("blocks.") for k in counts)


def test_instrument_does_not_double_mark_ckprof_checkpoint() -> None:
    """GIVEN ckprof.checkpoint used inside instrument_checkpointing
    WHEN markers are counted THEN each region is marked once, not twice."""
    with ckprof.instrument_checkpointing():
        counts = marker_counts(run_model(ckprof.checkpoint))
    assert counts == expected()


def test_instrument_restores_everything_even_on_exception_and_nesting() -> None:
    """GIVEN instrument_checkpointing entered twice (nested), the inner body raising
    WHEN the contexts exit
    THEN the exception propagates unchanged, patches stay while the outer is open, and
    after the outer exit torch's originals are back (by identity)."""
    originals = _originals()

    class Boom(Exception):
        pass

    with ckprof.instrument_checkpointing():
        patched = _originals()
        assert patched[0] is not originals[0] and patched[1] is not originals[1]
        with pytest.raises(Boom), ckprof.instrument_checkpointing():
            raise Boom
        assert _originals() == patched
    assert _originals() == originals
    with pytest.raises(Boom), ckprof.instrument_checkpointing():
        raise Boom
    assert _originals() == originals


def test_instrument_leaves_other_threads_alone() -> None:
    """GIVEN one thread inside instrument_checkpointing and another thread running a
    partial-bound torch checkpoint at the same time
    WHEN the other thread's run is profiled
    THEN the other thread's regions carry no markers."""
    entered, done = threading.Event(), threading.Event()

    def hold() -> None:
        with ckprof.instrument_checkpointing():
            entered.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        entered.wait(30)
        counts = marker_counts(run_model(functools.partial(tcp.checkpoint, use_reentrant=False)))
    finally:
        done.set()
        t.join()
    assert counts == Counter()
    assert _originals()[0] is regions._ORIG_GENERATOR


def test_instrument_reaches_composable_checkpoint() -> None:
    """GIVEN blocks marked with torch.distributed._composable.checkpoint (which imported
    torch's generator by name) WHEN run inside instrument_checkpointing under a profiler
    THEN each block gets its markers, and the module global is restored after."""
    composable = pytest.importorskip("torch.distributed._composable.checkpoint_activation")
    original = composable._checkpoint_without_reentrant_generator
    torch.manual_seed(0)
    model = TinyNet()
    for block in model.blocks:
        composable.checkpoint(block)
    root_known(model)
    x = torch.randn(4, 64)
    with ckprof.instrument_checkpointing():
        assert composable._checkpoint_without_reentrant_generator is not original
        counts = marker_counts(lambda: model(x).sum().backward())
    assert composable._checkpoint_without_reentrant_generator is original
    assert counts == expected()


def test_a_module_imported_while_instrumented_is_unbound_after() -> None:
    """GIVEN the composable checkpoint module imported for the first time INSIDE
    instrument_checkpointing (it binds torch's generator by name, then the patched one)
    WHEN the instrumentation ends THEN its global is torch's generator again."""
    import importlib
    import sys

    pytest.importorskip("torch.distributed._composable.checkpoint_activation")
    name = "torch.distributed._composable.checkpoint_activation"
    saved = sys.modules.pop(name)
    try:
        with ckprof.instrument_checkpointing():
            fresh = importlib.import_module(name)
            assert fresh._checkpoint_without_reentrant_generator is regions._patched_generator
        assert fresh._checkpoint_without_reentrant_generator is regions._ORIG_GENERATOR
    finally:
        sys.modules[name] = saved
