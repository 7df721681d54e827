"""Recompute inside torch.compile on real CPU captures (inductor, non-reentrant
checkpoints bound like HF's ``partial(checkpoint)``), cross-checked against an
independent ground truth computed here: torch's own kernel provenance
(``trace.provenance_tracking_level``: kernel call -> post-grad nodes) joined with the
partitioner's own classification (``classify_nodes``: which joint-graph nodes are
forward nodes), matched to the raw JSON's events under each compiled backward.

Compiling is the slow part (seconds even with warm C++ kernel caches): one module
fixture compiles once with isolated FX / AOTAutograd caches and ckprof record folder,
so every run takes the cold path (ckprof sees the compile) and later tests the warm
one (graphs loaded from torch's cache)."""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.capture import REGIONS, build_model, capture_trace, one_torch_thread, read_trace
from support.capture import torch as _torch  # importorskip

import ckprof
from ckprof.capture import compiled as compiled_capture

torch = _torch
pytestmark = [pytest.mark.torch, pytest.mark.slow]

STEPS = 2


class _Truth:
    """The partitioner's classification of the last joint graph it split."""

    def __init__(self) -> None:
        self.forward_names: set[str] = set()
        self.backward_nodes: dict[str, Any] = {}

    def wrap(self, original: Any) -> Any:
        import torch._functorch.partitioners as partitioners

        @functools.wraps(original)
        def partition(gm: Any, *args: Any, **kwargs: Any) -> Any:
            fw, bw = original(gm, *args, **kwargs)
            info = partitioners.classify_nodes(
                gm, kwargs.get("static_lifetime_input_indices") or [], kwargs["num_fwd_outputs"])
            self.forward_names = {n.name for n in info.required_fw_nodes}
            self.backward_nodes = {n.name: n for n in bw.graph.nodes}
            return fw, bw

        return partition

    def calls(self, provenance: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(trace name, r/m/b) of the backward graph's kernel calls, in code order."""
        out = []
        # torch resets its provenance map around each compile_fx call and restores it
        # after: what stays is the lazily compiled backward graph's map
        for key in sorted(provenance, key=lambda k: int(k.rsplit(":", 1)[1])):
            kernel = key.rsplit(":", 1)[0]
            nodes = [self.backward_nodes[n] for n in provenance[key] if n in self.backward_nodes]
            nodes = [n for n in nodes if n.op == "call_function"
                     and not getattr(n.target, "is_view", False)]
            fwd = [n for n in nodes if n.name in self.forward_names]
            cls = "r" if fwd and len(fwd) == len(nodes) else ("m" if fwd else "b")
            out.append((kernel, cls))
        return out


def _direct_children(events: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict]:
    """Events nested directly in ``parent`` on its thread (raw JSON, no ckprof loader)."""
    start, end = parent["ts"], parent["ts"] + parent["dur"]
    inner = sorted((e for e in events if e is not parent and e.get("tid") == parent.get("tid")
                    and e.get("cat") in ("cpu_op", "user_annotation")
                    and start <= e["ts"] and e["ts"] + e["dur"] <= end + 1e-3),
                   key=lambda e: (e["ts"], -e["dur"]))
    out, until = [], -1.0
    for e in inner:
        if e["ts"] >= until:
            out.append(e)
            until = e["ts"] + e["dur"]
    return out


def truth_events(path: Path, calls: list[tuple[str, str]], kernel_profile: bool
                 ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(recompute, non-recompute) event intervals in us of every compiled backward."""
    events = [e for e in read_trace(path)["traceEvents"] if e.get("ph") == "X"]
    names = []
    for kernel, _ in calls:
        if kernel.startswith("extern_kernels."):
            names.append("aten::" + kernel.split(".", 1)[1])
        elif kernel.startswith("cpp_") and kernel_profile:
            names.append(kernel)  # the trace says graph_<id>_<kernel>
        else:
            names.append(None)
    recompute, other = [], []
    for bw in (e for e in events if e["name"] == "CompiledFunctionBackward"):
        call = next(c for c in _direct_children(events, bw)
                    if c["name"].startswith("## Call CompiledFxGraph"))
        j = 0
        for child in _direct_children(events, call):
            for i in range(j, len(calls)):
                want = names[i]
                if want and (child["name"] == want or child["name"].endswith("_" + want)):
                    span = (child["ts"], child["ts"] + child["dur"])
                    (recompute if calls[i][1] == "r" else other).append(span)
                    j = i + 1
                    break
    return recompute, other


def recompute_spans_us(analysis: Any) -> list[tuple[float, float]]:
    seg = analysis.phases.segments
    seg = seg[seg["phase"] == "recompute"]
    return [(s / 1e3, e / 1e3) for s, e in zip(
        seg["start_ns"].tolist(), seg["end_ns"].tolist(), strict=True)]


def _covered(span: tuple[float, float], spans: list[tuple[float, float]]) -> bool:
    return any(s <= span[0] + 1e-3 and span[1] <= e + 1e-3 for s, e in spans)


def _overlaps(span: tuple[float, float], spans: list[tuple[float, float]]) -> bool:
    return any(span[0] < e - 1e-3 and s < span[1] - 1e-3 for s, e in spans)


def _capture(out: Path, model: Any, optimizer: Any, x: Any) -> tuple[Path, list[Any]]:
    from support.capture import train_step

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(out, wait=1, warmup=1, active=STEPS) as cap:
            for _ in range(2 + STEPS):
                train_step(model, optimizer, x)
                cap.step()
    assert len(cap.trace_paths) == 1, cap.errors
    return cap.trace_paths[0], list(caught)


@pytest.fixture(scope="module")
def compiled_env(tmp_path_factory: pytest.TempPathFactory):
    """Isolated torch.compile caches + ckprof record folder + ground-truth hooks."""
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.debug as inductor_debug
    from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCache
    from torch._inductor.codecache import FxGraphCache

    tmp = tmp_path_factory.mktemp("compiled")
    truth = _Truth()
    with one_torch_thread(), pytest.MonkeyPatch.context() as mp, \
            torch._inductor.config.patch({"trace.provenance_tracking_level": 1}):
        mp.setattr(FxGraphCache, "_get_tmp_dir", staticmethod(lambda: str(tmp / "fxgraph")))
        mp.setattr(AOTAutogradCache, "_get_tmp_dir",
                   staticmethod(lambda: str(tmp / "aotautograd")))
        mp.setattr(compiled_capture, "sidecar_dir", lambda: str(tmp / "records"))
        mp.setattr(compile_fx, "min_cut_rematerialization_partition",
                   truth.wrap(compile_fx.min_cut_rematerialization_partition))
        torch._dynamo.reset()
        yield SimpleNamespace(tmp=tmp, truth=truth, provenance=inductor_debug)
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def compiled_run(compiled_env):
    """A compiled TinyNet (3 checkpointed blocks) captured by ckprof, cold compile."""
    torch._dynamo.reset()
    model, optimizer, x = build_model("plain")
    before = dict(compiled_env.provenance._inductor_triton_kernel_to_post_grad_node_info)
    path, caught = _capture(compiled_env.tmp / "cold", torch.compile(model), optimizer, x)
    provenance = {k: list(v) for k, v in
                  compiled_env.provenance._inductor_triton_kernel_to_post_grad_node_info.items()
                  if k not in before}
    calls = compiled_env.truth.calls(provenance)
    return SimpleNamespace(path=path, caught=caught, calls=calls, model=model,
                           optimizer=optimizer, x=x, analysis=ckprof.load(path))


def test_compiled_recompute_is_found_and_named_as_in_eager_mode(compiled_run, tmp_path):
    # GIVEN a compiled model whose three blocks are checkpointed (HF-style partial)
    a = compiled_run.analysis
    # THEN recompute is found inside the compiled backward, per region and step
    assert a.recompute_detection == "compiled"
    regions = a.regions_table().set_index("region")
    assert sorted(regions.index) == sorted(REGIONS)
    assert (regions["count"] == STEPS).all()
    assert (regions["wall_ms"] > 0).all()
    # AND the names are the ones eager mode gives the same model's regions
    eager = ckprof.load(capture_trace(tmp_path, "markers"))
    assert set(eager.regions_table()["region"]) == set(regions.index)
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "separated"
    assert out["kernel_events_found"] == out["kernel_events_expected"] > 0


def test_compiled_recompute_matches_torch_provenance_and_partitioner(compiled_run):
    # GIVEN torch's own view: kernel calls of the backward graph (provenance) classified
    # by the partitioner (forward nodes), matched to the raw JSON's events
    calls = compiled_run.calls
    assert [c for _, c in calls].count("r") >= 3  # one recompute matmul per block at least
    recompute, other = truth_events(compiled_run.path, calls, kernel_profile=False)
    assert len(recompute) >= 3 * STEPS
    spans = recompute_spans_us(compiled_run.analysis)
    # THEN every recompute kernel event is recompute in ckprof, no other event is
    assert all(_covered(r, spans) for r in recompute)
    assert not any(_overlaps(o, spans) for o in other)
    # AND ckprof's recompute time is at least the recompute events' own time
    # (us from the raw JSON's floats vs ckprof's exact ns: 1 ns of rounding per event)
    total = sum(e - s for s, e in spans)
    assert total >= sum(e - s for s, e in recompute) - 1e-3 * max(1, len(recompute))


def test_ckprof_changes_nothing_torch_compile_does_or_warns(compiled_run, tmp_path):
    # GIVEN the capture above: torch.compile(module) with ckprof's phase markers
    assert not [w for w in compiled_run.caught if "global hooks" in str(w.message)]
    key = next(iter(compiled_run.analysis.trace.ckprof["compiled"]["graphs"]))
    # WHEN the same model is compiled again without ckprof, under a plain profiler
    torch._dynamo.reset()
    from support.capture import train_step
    from torch.profiler import ProfilerActivity, profile

    model = torch.compile(compiled_run.model)
    train_step(model, compiled_run.optimizer, compiled_run.x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, compiled_run.optimizer, compiled_run.x)
    names = {e.name for e in prof.events()}
    # THEN inductor got the same backward graph and config (same FX graph cache key)
    assert f"## Call CompiledFxGraph {key} ##" in names


def test_graphs_loaded_from_torch_cache_are_known_from_ckprof_record(compiled_run, compiled_env):
    # GIVEN the model compiled before (its graphs now in torch's caches)
    torch._dynamo.reset()
    path, _ = _capture(compiled_env.tmp / "warm", torch.compile(compiled_run.model),
                       compiled_run.optimizer, compiled_run.x)
    a = ckprof.load(path)
    # THEN the graph was not compiled again, and ckprof still knows its recompute
    graphs = a.trace.ckprof["compiled"]["graphs"]
    assert [g["source"] for g in graphs.values()] == ["ckprof-cache"]
    assert a.recompute_detection == "compiled"
    assert sorted(a.regions_table()["region"]) == sorted(REGIONS)


def test_without_the_record_the_report_says_not_separable(compiled_run, compiled_env):
    # GIVEN ckprof's record of the graph is gone (another machine's torch cache, say)
    for f in (compiled_env.tmp / "records").glob("*.json"):
        os.unlink(f)
    torch._dynamo.reset()
    path, _ = _capture(compiled_env.tmp / "unknown", torch.compile(compiled_run.model),
                       compiled_run.optimizer, compiled_run.x)
    a = ckprof.load(path)
    # THEN there is no silent 0: the JSON and the notes say it cannot be separated
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "not_separable"
    assert out["not_separable_wall_ms"] > 0
    assert a.recompute_detection == "none"
    assert any("not separable" in n and "ckprof compare" in n for n in a.notes)
    meta = json.loads(json.dumps(a.trace.ckprof["compiled"]))
    assert meta["unknown"] == out["unknown_graphs"]


def test_cpp_kernel_ranges_are_matched_with_kernel_profile(compiled_env, tmp_path):
    # GIVEN cpp.enable_kernel_profile (a user's setting): C++ kernels are trace ranges
    torch._dynamo.reset()
    before = dict(compiled_env.provenance._inductor_triton_kernel_to_post_grad_node_info)
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        model, optimizer, x = build_model("plain")
        path, _ = _capture(tmp_path / "kp", torch.compile(model), optimizer, x)
    provenance = {k: list(v) for k, v in
                  compiled_env.provenance._inductor_triton_kernel_to_post_grad_node_info.items()
                  if k not in before}
    calls = compiled_env.truth.calls(provenance)
    a = ckprof.load(path)
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "separated"
    assert out["kernel_events_found"] == out["kernel_events_expected"]
    # THEN C++ recompute kernels are events too, all inside ckprof's recompute
    recompute, other = truth_events(path, calls, kernel_profile=True)
    cpp_recompute = [c for c in calls if c[0].startswith("cpp_") and c[1] == "r"]
    assert len(recompute) > len([c for c in calls if c[1] == "r"]) * STEPS - len(
        cpp_recompute) * STEPS - 1
    spans = recompute_spans_us(a)
    assert all(_covered(r, spans) for r in recompute)
    assert not any(_overlaps(o, spans) for o in other)
    torch._dynamo.reset()


def test_tiny_hf_llama_compiled_with_gradient_checkpointing(compiled_env, tmp_path):
    # GIVEN a tiny HF Llama (config only, no download), gradient checkpointing through
    # HF's own partial(checkpoint), compiled: HF's forward graph-breaks, so the
    # decoder stack is compiled as its own graph (paths relative to ``model``) and
    # SDPA's recompute runs wrapped in run_with_rng_state
    transformers = pytest.importorskip("transformers")
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HF deprecation chatter
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(tmp_path / "hf", wait=1, warmup=1, active=STEPS) as cap:
            for _ in range(2 + STEPS):
                compiled(input_ids=ids, labels=ids).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                cap.step()
    assert not [w for w in caught if "global hooks" in str(w.message)]
    a = ckprof.load(cap.trace_paths[0])
    # THEN the layers are named by their path in the model passed to the step, as in
    # eager mode, and every expected kernel event was found
    regions = a.regions_table().set_index("region")
    assert {"model.layers.0", "model.layers.1"} <= set(regions.index)
    assert (regions.loc[["model.layers.0", "model.layers.1"], "count"] == STEPS).all()
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "separated"
    assert out["kernel_events_found"] == out["kernel_events_expected"] > 0
    assert a.recompute_detection == "compiled"
    torch._dynamo.reset()


def test_torch_compile_called_after_the_capture_started_is_watched(monkeypatch):
    # GIVEN a capture started before torch.compile was ever loaded (simulated)
    monkeypatch.setattr(compiled_capture, "compile_in_use", lambda: False)
    watcher = compiled_capture.CompileWatcher()
    original = torch.compile
    watcher.start()
    try:
        assert torch.compile is not original and not watcher.watching
        # WHEN the model is compiled (lazily: nothing compiles before its first call)
        monkeypatch.setattr(compiled_capture, "compile_in_use", lambda: True)
        torch.compile(torch.nn.Linear(2, 2))
        # THEN ckprof watches from then on
        assert watcher.watching
    finally:
        watcher.stop()
    # AND everything is put back
    assert torch.compile is original and not watcher.watching
    import torch._inductor.compile_fx as compile_fx

    assert not hasattr(compile_fx.fx_codegen_and_compile, "_ckprof_original")


def test_compiling_a_function_while_recording_neither_breaks_nor_fails(compiled_env, tmp_path):
    # GIVEN a compiled function (not module) whose first call, hence its compile,
    # happens while ckprof records: dynamo traces the module hooks ckprof armed
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))

    @torch.compile
    def loss_of(model: Any, x: Any) -> Any:
        return model(x).square().mean()

    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    breaks = sum(dynamo_utils.counters["graph_break"].values())
    x = torch.randn(4, 8)
    with ckprof.capture(tmp_path / "fn", wait=0, warmup=0, active=2) as cap:
        for _ in range(2):
            loss_of(net, x).backward()
            cap.step()
    # THEN it compiles as without ckprof: one graph, no graph break, no error
    assert dynamo_utils.counters["stats"]["unique_graphs"] - graphs == 1
    assert sum(dynamo_utils.counters["graph_break"].values()) == breaks
    assert len(cap.trace_paths) == 1
    torch._dynamo.reset()
