"""Selective-checkpointing advice, measured from a trace (pure: no torch).

Contract::

    advise(analysis, none=None, *, budget_bytes=None, device=None) -> Advice
    Advice.table / .save_ops / .policy() / .code() / .sweep_spec / .render(fmt) / .to_dict()
    plot_advised_frontier(table, advised="advised", ...) -> matplotlib Figure

``analysis`` is a trace of the model under FULL checkpointing (every block recomputed),
with recompute found (markers, stack or sequence) and memory captured, as
``ckprof.capture`` records it. ``none`` optionally is a trace of the same model without
checkpointing (the two-trace form, NOTE [ Advice from two traces ]).

# NOTE [ Selective checkpointing advice ]
# Selective activation checkpointing (torch.utils.checkpoint.create_selective_checkpoint_
# contexts) decides per op type: MUST_SAVE keeps the op's outputs from forward to
# backward, PREFER_RECOMPUTE reruns the op in backward. For every op type recomputed in
# the trace ckprof measures, per step:
#   cost   what saving it would stop recomputing: the self time of its recompute calls
#          plus that of the ops they call that are not candidates themselves: the GPU
#          time of the kernels they launched when recompute is GPU-bound (the GPU busy
#          >= 50% of the recompute wall time, ckprof.analysis.gpu), else wall time (CPU
#          traces, and launch-bound GPU recompute where kernels run in the CPU's shadow);
#   bytes  what saving it would keep alive: the bytes its calls in the FORWARD run of
#          the checkpointed regions (inside ``ckprof::checkpoint::<region>`` ranges)
#          allocated that are still live when the call returns: its outputs, which
#          MUST_SAVE stores from forward to backward (workspace freed inside the call
#          does not count; NOTE [ Who allocated a block ]). This counts calls that
#          recompute never reruns because of early stop (their outputs are stored all
#          the same, for no time back). Without checkpoint markers (stack or sequence
#          detection) the recompute calls' outputs are used instead (noted);
# and ranks op types by cost / bytes (ms of recompute per MiB kept): the top is worth
# saving. Candidates are aten ops that allocate; views and in-place ops (nothing of
# their own to keep) and non-aten records are always recomputed, and so are ops costing
# under 1% of the recompute (saving them buys nothing back; they only add memory).
# Noise: each call's time is clipped to 3x the median of the same call (same op, same
# position in its recompute occurrence) over the steps and regions, so a thread
# preempted inside one call does not make an op look expensive.
#   default  save every op whose ms/MiB is at least that of checkpointing as a whole
#            (the recompute of the blocks per MiB they keep for backward, NOTE
#            [ Selective checkpointing or unchecked blocks ]): each saved op buys back
#            more time per MiB than leaving a block unchecked would.
#   budget   save ops in ranking order, among those at or above that ratio, while the
#            estimated peak stays within the budget (skipping any that would not fit);
#            the rest is the cheapest-to-recompute set that keeps the peak under it.
#            Below the ratio, leaving whole blocks unchecked (every_<k>) buys more time
#            per MiB than saving the op, so the budget is better spent that way.
# Then the list is weighed against the whole-block policies (NOTE [ Selective
# checkpointing or unchecked blocks ]); ``recommended`` names the one to run.
# Estimates (labelled so): peak = the trace's peak + bytes of the saved ops (an upper
# bound: every block's saved outputs assumed live at the peak); step = the trace's mean
# step - cost of the saved ops. ``ckprof sweep`` with the ``advised:`` policy measures
# the real point.
#
# NOTE [ The price of selective checkpointing ]
# torch's selective checkpointing runs every op of a checkpointed region through a
# Python TorchDispatchMode, in forward and in recompute, whichever ops are saved: a fixed
# cost per step that no choice of ops removes. Measured on this project's 2-core VM
# (torch 2.13, CPU, one thread, CPU time per step): 30-50 us per intercepted op (the
# ``PythonDispatchMode`` frames a SAC trace shows take 10-25 us of it), i.e. 16-23 ms per
# step on the demo transformer, as much as half of what saving its matmuls buys back at
# batch 32, dim 128. The intercepted ops are estimated from a trace without SAC as the
# calls carrying an autograd ``Sequence number`` in the regions' forward and recompute
# (within 2% of the ``PythonDispatchMode`` count of the same model under SAC). When the
# ops worth saving buy back less than that, the advice keeps full checkpointing and says
# so. On a GPU that is busy the overhead runs while kernels do, so it costs less than
# this; ``dispatch_overhead_us=0`` leaves it out.
#
# NOTE [ Selective checkpointing or unchecked blocks ]
# Saving ops is one way to spend memory on speed; leaving whole blocks unchecked
# (every_<k>, none) is the other, and on small models it is often the better one: it
# also drops the block's Python forward rerun, checkpoint bookkeeping and SAC's dispatch
# cost, while SAC reruns the block's Python and only skips the saved ops. From the full-
# checkpointing trace, per region and step:
#   cost   its recompute time (``time.regions``: wall, or GPU time when recompute is
#          GPU-bound), what leaving it unchecked buys back;
#   kept   the bytes its recompute allocated that are still live when the occurrence
#          ends: what autograd keeps of the block for backward, which an unchecked block
#          keeps from forward on (its inputs are kept by checkpointing too). The
#          candidates' output bytes overcount it (88 against 68 MiB per step on the
#          demo transformer at batch 32): not every output is saved for backward.
# Their ratio (ms per MiB) is the exchange rate of checkpointing as a whole and the
# default threshold. The estimated points (``Advice.alternatives``) are full, every_<k>
# (blocks 0, k, 2k ... in forward order checkpointed) and none: the trace's step minus
# the unchecked blocks' cost. Peaks: memory is not additive, so the trace's own live
# bytes over time (``memory.timeline``) are replayed with each unchecked block's kept
# bytes added from the end of its forward run to the start of its recompute (from then
# on full checkpointing holds them too), and the highest point is the estimate. The
# selective list's outputs are added over the same windows. So a model whose peak is
# the optimizer's step (AdamW's state) gets no extra peak from small activations, and
# one whose peak is backward's gets every block's share. Without forward-run markers the
# extras add to the trace's peak (an upper bound). The selective list's time is the
# step minus what the saved ops cost plus SAC's dispatch.
#   no budget  the list is recommended when its point is faster than the whole-block
#              frontier at its peak (linear between the neighbouring points: the
#              convex frontier); else the fastest whole-block point that needs no
#              more memory than the list; with no list, the fastest that needs no
#              more than full (on the H200 traces the peak is AdamW's step, and
#              none's activations stay under it);
#   budget     the fastest point within the budget, the list's included; full when none
#              fits.
# Measured on this VM (bench_advice.py, CPU time, no profiler): on the demo transformer
# and a tiny Llama at hidden 128 every selective list is dominated by every_2, and the
# advice recommends every_2; at dim/hidden 512 it recommends its list (mm, attention,
# addmm: +0.1 to +0.8 ms beyond the frontier), and under a budget at full's own peak
# saving mm and attention ran 5.6% faster than full at the same peak (demo-wide).
#
# NOTE [ Advice from two traces ]
# With a trace of the model WITHOUT checkpointing, the bytes come from it instead: the
# bytes each op type allocated in forward that are still live when forward ends (what
# autograd keeps for backward). That counts ops outside the checkpointed blocks too (an
# upper bound); costs still come from the full-checkpointing trace.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ckprof.errors import NotCapturedError
from ckprof.report.text import (
    check_format,
    format_bytes,
    format_ms,
    jsonable,
    markdown_table,
    records,
    text_table,
)
from ckprof.strategy.policies import Policy, op_name

if TYPE_CHECKING:  # pragma: no cover
    from ckprof.analysis import Analysis

__all__ = ["ADVISED", "Advice", "advice_section", "advise", "advised_policy", "plot_advised_frontier"]

#: the name of the advised policy in a sweep
ADVISED = "advised"
MIB = 2**20
#: a call costing more than this many times the median of the same call elsewhere is
#: clipped to it (NOTE [ Selective checkpointing advice ], noise)
SPIKE = 3.0
#: ops costing less than this share of the recompute are never saved
MIN_SHARE = 0.01
#: recompute utilisation (% of its wall time the GPU is busy) above which it is GPU-bound
GPU_BOUND_PCT = 50.0
#: the estimated peak (bytes) with these extra bytes per region kept from forward to
#: recompute (:func:`_peak_model`)
PeakOf = Callable[[dict[str, float]], float]
#: default cost of selective checkpointing's dispatch mode per intercepted op, in us
#: (NOTE [ The price of selective checkpointing ])
DISPATCH_OVERHEAD_US = 30.0

TABLE_COLUMNS = ("rank", "op", "calls", "cost_ms", "wall_ms", "gpu_ms", "saved_bytes",
                 "ms_per_mib", "decision", "why")


@dataclass(frozen=True)
class Advice:
    """What to save under selective checkpointing. See NOTE [ Selective checkpointing
    advice ].

    ``table``: one row per op type recomputed (per-step figures): ``rank`` (1 = most ms
    per MiB; 0 for non-candidates), ``op``, ``calls``, ``cost_ms`` (the ranking cost),
    ``wall_ms``, ``gpu_ms``, ``saved_bytes``, ``ms_per_mib``, ``decision`` (``save`` |
    ``recompute``), ``why``. ``save_ops``: aten names without the ``aten::`` prefix, in
    rank order. ``estimate``: the trace's step ms and peak, and the estimated ones with
    the advice (``step_ms``, ``peak_bytes``, ``est_step_ms``, ``est_peak_bytes``)."""

    table: pd.DataFrame
    save_ops: tuple[str, ...]
    threshold_ms_per_mib: float
    cost_basis: str
    device: str
    budget_bytes: int | None
    estimate: dict[str, float]
    source: str
    notes: tuple[str, ...] = field(default=())
    #: what to run: "advised" (the selective list), "full" (saving does not pay its
    #: dispatch cost) or "every_<k>" (unchecked blocks buy more for that memory)
    recommended: str = "advised"
    #: estimated points of the whole-block policies (``policy``, ``est_step_ms``,
    #: ``est_peak_bytes``): full, every_<k>, none (NOTE [ Selective checkpointing or
    #: unchecked blocks ])
    alternatives: pd.DataFrame | None = None

    def recommended_policy(self, name: str | None = None) -> Policy:
        """The policy the advice recommends (see ``recommended``), named ``name`` when
        given (``advised``: the advice to measure, whatever form it took)."""
        if self.recommended == ADVISED:
            return self.policy(name or ADVISED)
        import dataclasses

        from ckprof.strategy.policies import parse_policy

        policy = parse_policy(self.recommended)
        # renamed, its text would parse back to the plain name: a worker gets the object
        return policy if name is None else dataclasses.replace(policy, name=name, spec="")

    @property
    def sweep_spec(self) -> str:
        """The policy for ``ckprof sweep --policy`` / ``ckprof.sweep(policies=[...])``."""
        return self.policy().spec

    def policy(self, name: str = ADVISED) -> Policy:
        """The advice as a sweep :class:`~ckprof.strategy.policies.Policy` (every block,
        saving ``save_ops``), named ``advised`` or ``advised-<label>``."""
        return advised_policy(self.save_ops, name=name)

    def code(self) -> str:
        """Python to paste into a training script (torch's selective checkpointing)."""
        ops = ", ".join(f"torch.ops.aten.{op}" for op in self.save_ops)
        return "\n".join([
            "import functools",
            "",
            "import torch",
            "from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,",
            "                                    create_selective_checkpoint_contexts)",
            "",
            f"# ckprof advice from {self.source}: save these ops' outputs, recompute the rest",
            f"SAVE = {{{ops}}}" if self.save_ops else "SAVE = set()  # nothing is worth saving",
            "",
            "",
            "def policy(ctx, op, *args, **kwargs):",
            "    if getattr(op, \"overloadpacket\", op) in SAVE:",
            "        return CheckpointPolicy.MUST_SAVE",
            "    return CheckpointPolicy.PREFER_RECOMPUTE",
            "",
            "",
            "context_fn = functools.partial(create_selective_checkpoint_contexts, policy)",
            "# in the model: out = checkpoint(block, x, use_reentrant=False, context_fn=context_fn)",
            "",
        ])

    def render(self, fmt: str = "table") -> str:
        return render_advice(self, fmt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "device": self.device,
            "cost_basis": self.cost_basis,
            "budget_bytes": self.budget_bytes,
            "threshold_ms_per_mib": jsonable(self.threshold_ms_per_mib),
            "save_ops": list(self.save_ops),
            "sweep_policy": self.sweep_spec,
            "recommended": self.recommended,
            "alternatives": (records(self.alternatives, digits=6)
                             if self.alternatives is not None else []),
            "estimate": {k: jsonable(v) for k, v in self.estimate.items()},
            "ops": records(self.table, digits=6),
            "code": self.code(),
            "notes": list(self.notes),
        }


def advised_policy(save_ops: Sequence[str], name: str = ADVISED) -> Policy:
    """Every block checkpointed, saving ``save_ops`` (none: plain full recompute).
    Its spec, ``<name>:<op>+<op>``, parses back to the same policy in a worker."""
    return Policy.advised(save_ops, name=name)


def _device(analysis: Analysis, device: str | None) -> str:
    mem = analysis.memory_table()
    if device is not None:
        if device not in set(mem["device"]):
            raise NotCapturedError(f"no memory events for device {device}", path=analysis.path,
                                   hint=f"Devices with memory: {', '.join(sorted(set(mem['device'])))}")
        return device
    gpu = [d for d in sorted(set(mem["device"])) if d != "cpu"]
    return gpu[0] if gpu else "cpu"


def _check(analysis: Analysis, what: str) -> None:
    if not analysis.memory.captured:
        raise NotCapturedError(f"{what} has no memory events: the advice needs them",
                               path=analysis.path,
                               hint="Capture with profile_memory=True (ckprof.capture does)")
    if not analysis.composition.captured:
        raise NotCapturedError(f"{what}: {analysis.composition.reason}", path=analysis.path,
                               hint="Capture with torch >= 2.0 profile_memory=True")


def _owners(analysis: Analysis, calls: pd.DataFrame, candidates: set[str]) -> np.ndarray:
    """For each recompute call: the row of its nearest candidate call (itself or an
    enclosing recompute call), -1 when none."""
    ctx = analysis.op_context
    rows = calls["event"].to_numpy(dtype=np.int64)
    names = calls["op"].to_numpy(dtype=object)
    in_set = pd.Series(np.arange(len(rows)), index=rows)
    parent_call = ctx.enclosing_call(rows)
    # the parent call may be a frame of the same call (SAC): step until another call
    pos_parent = in_set.reindex(parent_call).fillna(-1).to_numpy(dtype=np.int64)
    is_cand = np.array([n in candidates for n in names], dtype=bool)
    owner = np.where(is_cand, rows, -1)
    cur = pos_parent.copy()
    pending = (owner < 0) & (cur >= 0)
    for _ in range(256):  # depth-bounded walk up the recompute calls
        if not pending.any():
            break
        p = np.flatnonzero(pending)
        c = cur[p]
        hit = is_cand[c]
        owner[p[hit]] = rows[c[hit]]
        cur[p] = np.where(hit, -1, pos_parent[c])
        pending = (owner < 0) & (cur >= 0)
    return owner


def _outputs(analysis: Analysis, device: str, phase: str) -> pd.DataFrame:
    """Per call of ``phase`` (forward: inside a checkpointed region): ``op``,
    ``origin_region`` and the bytes it allocated on ``device`` that are still live when
    it returned."""
    blocks = analysis.composition.blocks
    b = blocks[(blocks["device"] == device) & (blocks["origin_phase"] == phase)
               & (blocks["op_event"] >= 0)]
    if phase == "forward":
        b = b[b["origin_region"] != ""]
    ev = analysis.trace.events
    call_end = (ev["ts_ns"].to_numpy(dtype=np.int64) + ev["dur_ns"].to_numpy(dtype=np.int64))
    end = call_end[b["op_event"].to_numpy(dtype=np.int64)]
    free = b["free_ts_ns"].to_numpy(dtype=np.int64)
    out = b[(free < 0) | (free >= end)]
    return out.groupby(["op_event", "op", "origin_region"], as_index=False)["bytes"].sum()


def _per_region(outputs: pd.DataFrame, n_steps: int) -> dict[str, dict[str, float]]:
    """``{op: {region: bytes per step}}`` from :func:`_outputs`."""
    out: dict[str, dict[str, float]] = {}
    sums = outputs.groupby(["op", "origin_region"])["bytes"].sum()
    for (op, region), b in sums.items():
        out.setdefault(str(op), {})[str(region)] = float(b) / n_steps
    return out


def _forward_kept(analysis: Analysis, device: str) -> pd.Series:
    """Bytes per op type allocated in forward and still live at the end of forward
    (NOTE [ Advice from two traces ])."""
    blocks = analysis.composition.blocks
    b = blocks[(blocks["device"] == device) & (blocks["origin_phase"] == "forward")]
    seg = analysis.phases.segments
    fwd_end = seg[seg["phase"] == "forward"].groupby("step")["end_ns"].max()
    end = fwd_end.reindex(b["origin_step"]).to_numpy(dtype=np.float64)
    free = b["free_ts_ns"].to_numpy(dtype=np.int64)
    kept = b[(free < 0) | (free >= end)]
    return kept.groupby("op")["bytes"].sum()


def _clip_spikes(calls: pd.DataFrame) -> pd.DataFrame:
    """Calls with their self and GPU time clipped to :data:`SPIKE` x the median of the
    same call (same op, same position in its recompute occurrence) over all occurrences:
    a preempted thread or a GC pause inside one call must not make an op look costly."""
    if calls.empty:
        return calls
    pos = calls.groupby(["step", "region", "op"], sort=False).cumcount()
    out = {}
    for col in ("self_ns", "gpu_ns"):
        med = calls.groupby([calls["op"], pos], sort=False)[col].transform("median")
        cap = np.ceil(SPIKE * med.to_numpy(dtype=np.float64)).astype(np.int64)
        vals = calls[col].to_numpy(dtype=np.int64)
        out[col] = np.where(med.to_numpy() > 0, np.minimum(vals, cap), vals)
    return calls.assign(**out)


def _dispatched_per_step(analysis: Analysis) -> float:
    """Op calls selective checkpointing's dispatch mode would intercept per step: those
    carrying an autograd ``Sequence number`` in the forward run of the checkpointed
    regions and in recompute (NOTE [ The price of selective checkpointing ])."""
    calls = analysis.ops.calls
    seq = analysis.trace.events["seq"].to_numpy(dtype=np.int64)
    rows = calls[(calls["phase"] == "recompute")
                 | ((calls["phase"] == "forward") & (calls["region"] != ""))]["event"]
    n = int((seq[rows.to_numpy(dtype=np.int64)] >= 0).sum())
    return n / max(analysis.step_count, 1)


def _is_candidate(op: str) -> bool:
    return op.startswith("aten::") and not op.endswith("_")


def _blocks(analysis: Analysis, device: str, *, gpu: bool = False) -> pd.DataFrame:
    """Per checkpointed region, in forward order (NOTE [ Selective checkpointing or
    unchecked blocks ]): ``region``, ``cost_ms`` (its recompute per step: what leaving it
    unchecked buys back; wall time, or the GPU time of what it launched when ``gpu``)
    and ``kept_bytes`` (per step, the bytes its recompute
    allocated on ``device`` that are still live when the occurrence ends: what autograd
    keeps of it for backward, which an unchecked block keeps from forward on)."""
    n_steps = max(analysis.step_count, 1)
    occ = analysis.phases.recompute
    regions = analysis.time.regions
    if occ.empty or regions.empty:
        return pd.DataFrame({"region": pd.Series([], dtype=object), "cost_ms": [], "kept_bytes": []})
    blocks = analysis.composition.blocks
    b = blocks[(blocks["device"] == device) & (blocks["origin_phase"] == "recompute")]
    kept: dict[str, float] = {}
    for region, o in occ.groupby("region", sort=False):
        o = o.sort_values("start_ns", kind="stable")
        starts = o["start_ns"].to_numpy(dtype=np.int64)
        ends = o["end_ns"].to_numpy(dtype=np.int64)
        mine = b[b["origin_region"] == region]
        at = mine["alloc_ts_ns"].to_numpy(dtype=np.int64)
        i = np.searchsorted(starts, at, side="right") - 1
        inside = i >= 0
        inside[inside] = at[inside] < ends[i[inside]]
        end = np.where(inside, ends[np.maximum(i, 0)], 0)
        free = mine["free_ts_ns"].to_numpy(dtype=np.int64)
        live = inside & ((free < 0) | (free >= end))
        kept[str(region)] = float(mine["bytes"].to_numpy(dtype=np.int64)[live].sum()) / n_steps
    # forward order: the first forward run of each region, else the reverse of recompute
    runs = analysis.phases.forward_runs
    first_seen: dict[str, int] = {}
    if runs is not None and len(runs):
        for r in runs.sort_values("start_ns", kind="stable")["region"]:
            first_seen.setdefault(str(r), len(first_seen))
    order = sorted(kept, key=lambda r: (first_seen.get(r, len(first_seen)),
                                        -int(occ.loc[occ["region"] == r, "start_ns"].min())))
    cost = regions.set_index("region")["gpu_ns" if gpu else "wall_ns"].fillna(0)
    return pd.DataFrame({"region": order,
                         "cost_ms": [float(cost.get(r, 0)) / 1e6 / n_steps for r in order],
                         "kept_bytes": [kept[r] for r in order]})


def _keep_windows(first_runs: pd.DataFrame, occ: pd.DataFrame) -> pd.DataFrame:
    """``step``, ``region``, ``from_ns``, ``to_ns``: from the end of each forward run of a
    region to the start of that region's next recompute in the same step (under gradient
    accumulation one window per micro-batch); runs without a later recompute have none."""
    out = []
    rec = occ.sort_values("start_ns", kind="stable").groupby(["step", "region"])["start_ns"]
    starts = {key: g.to_numpy(dtype=np.int64) for key, g in rec}
    for (step, region), g in first_runs.groupby(["step", "region"], sort=False):
        later = starts.get((step, region))
        if later is None:
            continue
        ends = np.sort(g["end_ns"].to_numpy(dtype=np.int64))
        at = np.searchsorted(later, ends, side="right")
        ok = at < len(later)
        out.append(pd.DataFrame({"step": step, "region": region, "from_ns": ends[ok],
                                 "to_ns": later[at[ok]]}))
    if not out:
        return pd.DataFrame({"step": [], "region": [], "from_ns": [], "to_ns": []})
    return pd.concat(out, ignore_index=True)


def _peak_model(analysis: Analysis, device: str, peak_bytes: float) -> PeakOf:
    """``peak_of(extra_by_region) -> bytes``: the estimated peak when each region keeps
    ``extra`` more bytes (per step) from the end of each of its forward runs to the start
    of its next recompute in the same step (:func:`_keep_windows`), on top of the trace's own live bytes (NOTE
    [ Selective checkpointing or unchecked blocks ], peaks). Without forward-run markers
    the extras simply add to the trace's peak (an upper bound)."""
    runs = analysis.phases.forward_runs
    occ = analysis.phases.recompute
    tl = analysis.memory.timeline
    tl = tl[(tl["device"] == device) & tl["step"].isin(set(analysis.phases.steps["step"]))]
    if runs is None or runs.empty or occ.empty or tl.empty:
        return lambda extra: peak_bytes + float(sum(extra.values()))
    win = _keep_windows(runs[runs["first_run"]], occ)
    ts = tl["ts_ns"].to_numpy(dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts, level = ts[order], tl["allocated_bytes"].to_numpy(dtype=np.float64)[order]
    top = float(level.max())
    regions = win["region"].astype(str).to_numpy()
    starts, ends = win["from_ns"].to_numpy(dtype=np.int64), win["to_ns"].to_numpy(dtype=np.int64)
    # ``extra`` is per step; a region kept over several windows a step (gradient
    # accumulation: one per micro-batch) holds its share in each
    windows_per_step = win.groupby("region")["from_ns"].size() / max(analysis.step_count, 1)
    share = 1.0 / windows_per_step.reindex(regions).to_numpy(dtype=np.float64)

    def peak_of(extra: dict[str, float]) -> float:
        amount = np.array([float(extra.get(r, 0.0)) for r in regions]) * share
        if not (amount > 0).any():
            return peak_bytes
        edge_t = np.concatenate([ends, starts])   # ends first: a window closing as
        edge_d = np.concatenate([-amount, amount])  # another opens does not overlap it
        k = np.argsort(edge_t, kind="stable")
        edge_t, running = edge_t[k], np.cumsum(edge_d[k])

        def extra_at(x: np.ndarray) -> np.ndarray:
            i = np.searchsorted(edge_t, x, side="right") - 1
            return np.where(i >= 0, running[np.maximum(i, 0)], 0.0)

        j = np.searchsorted(ts, edge_t, side="right") - 1
        at_edges = np.where(j >= 0, level[np.maximum(j, 0)], level[0]) + extra_at(edge_t)
        best = max(float((level + extra_at(ts)).max()), float(at_edges.max()))
        return peak_bytes + best - top

    return peak_of


def _alternatives(blocks: pd.DataFrame, step_ms: float, peak_of: PeakOf) -> pd.DataFrame:
    """Estimated points of the whole-block policies from the full-checkpointing trace:
    ``full``, ``every_<k>`` for k = 2..n (blocks 0, k, 2k ... checkpointed) and ``none``:
    ``policy``, ``est_step_ms`` (the trace's step minus the recompute of the blocks left
    unchecked), ``est_peak_bytes`` (``peak_of`` with what those blocks keep, see
    :func:`_peak_model`)."""
    n = len(blocks)
    names = blocks["region"].astype(str).tolist()
    wall = blocks["cost_ms"].to_numpy(dtype=np.float64)
    kept = blocks["kept_bytes"].to_numpy(dtype=np.float64)
    rows = []
    for k in [1, *range(2, n + 1), 0]:
        policy = Policy.none() if k == 0 else Policy.every_k(k)
        unchecked = np.ones(n, dtype=bool)
        unchecked[list(policy.chosen(n))] = False
        extra = {names[i]: float(kept[i]) for i in range(n) if unchecked[i]}
        rows.append((policy.name, step_ms - float(wall[unchecked].sum()), float(peak_of(extra))))
    out = pd.DataFrame(rows, columns=["policy", "est_step_ms", "est_peak_bytes"])
    return out.drop_duplicates(subset=["est_step_ms", "est_peak_bytes"]).reset_index(drop=True)


def _frontier_at(alternatives: pd.DataFrame, peak_bytes: float) -> float:
    """The whole-block frontier's step ms at ``peak_bytes``: linear between its
    neighbouring points (the convex frontier of the estimates), the fastest point's time
    beyond the leanest-to-fastest range, inf below the leanest point."""
    pts = sorted(zip(alternatives["est_peak_bytes"], alternatives["est_step_ms"], strict=True))
    front: list[tuple[float, float]] = []
    for m, t in pts:  # lower convex hull, leanest first, time falling
        if front and t >= front[-1][1]:
            continue
        while len(front) >= 2 and ((front[-1][1] - front[-2][1]) * (m - front[-2][0])
                                   >= (t - front[-2][1]) * (front[-1][0] - front[-2][0])):
            front.pop()
        front.append((m, t))
    if not front or peak_bytes < front[0][0]:
        return math.inf
    ms = [m for m, _ in front]
    return float(np.interp(peak_bytes, ms, [t for _, t in front]))


def _recommend(alternatives: pd.DataFrame, selective: bool, sac_step_ms: float,
               sac_peak_bytes: float, budget_bytes: int | None) -> tuple[str, str]:
    """``(policy to run, note)``: the selective list (``advised``) or a whole-block policy
    (NOTE [ Selective checkpointing or unchecked blocks ])."""
    def point(step: float, peak: float) -> str:
        return f"est. {step:,.1f} ms, {format_bytes(peak)}"

    alt = alternatives.sort_values(["est_step_ms", "est_peak_bytes"], kind="stable")
    if budget_bytes is None:
        if not selective:  # nothing worth saving: unchecked blocks that cost no peak
            full = alternatives[alternatives["policy"] == "full"]
            if full.empty:
                return "full", ""
            free = alt[alt["est_peak_bytes"] <= float(full["est_peak_bytes"].iloc[0])]
            best = free.iloc[0] if len(free) else full.iloc[0]
            if best["policy"] == "full":
                return "full", ""
            return str(best["policy"]), (
                f"leaving blocks unchecked does not raise the peak: it is set elsewhere in the "
                f"step (the optimizer's state, say), so {best['policy']} "
                f"({point(best['est_step_ms'], best['est_peak_bytes'])}) costs no memory over "
                f"full checkpointing: recommended {best['policy']}; measure it in a sweep")
        line = _frontier_at(alternatives, sac_peak_bytes)
        if not sac_step_ms > line:
            return ADVISED, ""
        leaner = alt[alt["est_peak_bytes"] <= sac_peak_bytes]
        best = leaner.iloc[0] if len(leaner) else alt.sort_values("est_peak_bytes").iloc[0]
        return str(best["policy"]), (
            f"selective checkpointing with these ops ({point(sac_step_ms, sac_peak_bytes)}) is "
            f"slower than whole blocks for that memory (est. {line:,.1f} ms between the "
            f"whole-block points around it; SAC's dispatch counted): recommended "
            f"{best['policy']} ({point(best['est_step_ms'], best['est_peak_bytes'])}), the "
            f"fastest that needs no more memory; measure both in a sweep")
    fits = alt[alt["est_peak_bytes"] <= budget_bytes]
    if selective and sac_peak_bytes <= budget_bytes and (
            fits.empty or sac_step_ms <= float(fits["est_step_ms"].min())):
        return ADVISED, ""
    if fits.empty:
        return "full", ""
    best = fits.iloc[0]
    return str(best["policy"]), (
        f"within the budget, {best['policy']} ({point(best['est_step_ms'], best['est_peak_bytes'])}) "
        + (f"is faster than selective checkpointing with these ops "
           f"({point(sac_step_ms, sac_peak_bytes)})" if selective else
           "is the fastest whole-block policy that fits")
        + f": recommended {best['policy']}; measure it in a sweep")


def advise(analysis: Analysis, none: Analysis | None = None, *, budget_bytes: int | None = None,
           device: str | None = None, dispatch_overhead_us: float = DISPATCH_OVERHEAD_US,
           threshold_ms_per_mib: float | None = None) -> Advice:
    """Rank the recomputed op types of a full-checkpointing trace by ms of recompute per
    MiB their outputs would keep alive, and choose what to save (pure).
    ``dispatch_overhead_us``: what selective checkpointing's dispatch mode costs per op it
    intercepts (NOTE [ The price of selective checkpointing ]). ``threshold_ms_per_mib``:
    save ops at or above this ratio instead of that of checkpointing as a whole.
    See NOTE [ Selective checkpointing advice ]."""
    _check(analysis, "the checkpointed trace")
    dev = _device(analysis, device)
    notes: list[str] = []
    calls = analysis.ops.calls
    calls = calls[calls["phase"] == "recompute"].reset_index(drop=True)
    # every figure is per analysed step (an A/B trace recomputes in half of them only)
    n_steps = max(analysis.step_count, 1)
    if calls.empty:
        raise NotCapturedError(
            "no recompute found in the trace, so there is nothing to advise on",
            path=analysis.path,
            hint="Profile the model with every block checkpointed (policy 'full')")
    if none is not None:
        _check(none, "the trace without checkpointing")
        fwd = _forward_kept(none, _device(none, dev if dev in set(none.memory_table()["device"])
                                          else None))
        n_none = max(none.step_count, 1)
        saved_by_op = fwd / n_none
        notes.append("bytes from the trace without checkpointing: what each op type keeps "
                     "alive at the end of forward, inside and outside the checkpointed blocks "
                     "(an upper bound)")
        by_region: dict[str, dict[str, float]] | None = None  # not known: peaks add up
    else:
        fwd = _outputs(analysis, dev, "forward")
        saved_by_op = fwd.groupby("op")["bytes"].sum() / n_steps
        by_region = _per_region(fwd, n_steps)
        if fwd.empty:
            rec = _outputs(analysis, dev, "recompute")
            saved_by_op = rec.groupby("op")["bytes"].sum() / n_steps
            by_region = _per_region(rec, n_steps)
            notes.append("no forward run of a checkpointed region is marked (ckprof::checkpoint "
                         "ranges): bytes are the recompute calls' outputs, which miss the ops "
                         "early stop does not rerun")
    calls = _clip_spikes(calls)
    candidates = {op for op, v in saved_by_op.items() if v > 0 and _is_candidate(str(op))}
    candidates &= set(calls["op"])
    owner = _owners(analysis, calls, candidates)
    name_of = pd.Series(calls["op"].to_numpy(), index=calls["event"].to_numpy())
    owner_op = np.where(owner >= 0, name_of.reindex(owner).to_numpy(dtype=object), calls["op"])
    use_gpu = bool(analysis.has_gpu) and float(calls["gpu_ns"].sum()) > 0
    if use_gpu:
        # NOTE [ GPU-bound or launch-bound ]: recompute costs GPU time only when the GPU is
        # busy during it; a launch-bound recompute costs the CPU time of its ops
        tot = analysis.gpu.totals.set_index("phase")
        util = float(tot.loc["recompute", "utilization_pct"]) if "recompute" in tot.index else 0.0
        use_gpu = util >= GPU_BOUND_PCT
        notes.append(f"recompute keeps the GPU busy {util:.0f}% of its wall time: "
                     + ("GPU-bound, costs are GPU time and the CPU-side dispatch overhead "
                        "runs while kernels do" if use_gpu else
                        "launch-bound, costs are the CPU time of the ops (kernels run in "
                        "their shadow)"))
        if use_gpu:
            dispatch_overhead_us = 0.0
    cost = (calls.assign(owner_op=owner_op)
            .groupby("owner_op").agg(wall_ns=("self_ns", "sum"), gpu_ns=("gpu_ns", "sum")))
    counts = calls.groupby("op").size()
    ops = sorted(set(calls["op"]))
    wall_ms = cost["wall_ns"].reindex(ops, fill_value=0).to_numpy(dtype=np.float64) / 1e6 / n_steps
    gpu_ms = cost["gpu_ns"].reindex(ops, fill_value=0).to_numpy(dtype=np.float64) / 1e6 / n_steps
    cost_ms = gpu_ms if use_gpu else wall_ms
    saved = saved_by_op.reindex(ops, fill_value=0).to_numpy(dtype=np.float64)
    cand = np.array([op in candidates for op in ops], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(cand & (saved > 0), cost_ms / (saved / MIB), np.nan)
    table = pd.DataFrame({"op": ops, "calls": counts.reindex(ops).to_numpy(dtype=np.float64) / n_steps,
                          "cost_ms": cost_ms, "wall_ms": wall_ms,
                          "gpu_ms": gpu_ms if analysis.has_gpu else np.nan,
                          "saved_bytes": saved, "ms_per_mib": density, "candidate": cand})
    table = (table.assign(_d=-np.nan_to_num(table["ms_per_mib"], nan=-np.inf))
             .sort_values(["candidate", "_d", "cost_ms", "op"], ascending=[False, True, False, True],
                          kind="stable").drop(columns="_d").reset_index(drop=True))
    total_cost = float((calls["gpu_ns"] if use_gpu else calls["self_ns"]).sum()) / 1e6 / n_steps
    cand_bytes = float(table.loc[table["candidate"], "saved_bytes"].sum())
    blocks = _blocks(analysis, dev, gpu=use_gpu)
    block_ms = float(blocks["cost_ms"].sum())
    block_bytes = float(blocks["kept_bytes"].sum())
    if block_ms > 0 and block_bytes > 0:
        # NOTE [ Selective checkpointing or unchecked blocks ]: the exchange rate of
        # leaving blocks unchecked, from what their recompute costs and keeps
        ratio = block_ms / (block_bytes / MIB)
    else:  # no recompute allocation on this device: the op outputs instead
        ratio = total_cost / (cand_bytes / MIB) if cand_bytes > 0 else math.nan
    threshold = ratio if threshold_ms_per_mib is None else float(threshold_ms_per_mib)

    peak = analysis.memory_table()
    peak_bytes = float(peak.loc[peak["device"] == dev, "peak_bytes"].max())
    step_ms = analysis.step_total_ns / 1e6 / n_steps
    peak_of = _peak_model(analysis, dev, peak_bytes)

    def sac_peak(ops: Sequence[str]) -> float:
        """The estimated peak with ``ops``' outputs saved (NOTE [ Selective checkpointing
        or unchecked blocks ], peaks)."""
        if by_region is None:
            return peak_bytes + float(saved_by_op.reindex(list(ops), fill_value=0).sum())
        extra: dict[str, float] = {}
        for op in ops:
            for region, b in by_region.get(op, {}).items():
                extra[region] = extra.get(region, 0.0) + b
        return peak_of(extra)
    save = np.zeros(len(table), dtype=bool)
    why = np.full(len(table), "", dtype=object)
    chosen: list[str] = []
    for i, r in enumerate(table.itertuples(index=False)):
        if not r.candidate:
            why[i] = ("in-place or not an aten op" if not _is_candidate(r.op)
                      else "keeps nothing alive of its own (a view, or only temporaries)")
            continue
        if r.cost_ms < MIN_SHARE * total_cost:
            share = r.cost_ms / total_cost * 100 if total_cost else 0.0
            why[i] = (f"costs {share:.2g}% of recompute (< {MIN_SHARE:.0%}): saving it buys "
                      "nothing back")
            continue
        if budget_bytes is None:
            save[i] = r.ms_per_mib >= threshold
            why[i] = (f"{r.ms_per_mib:,.3g} ms/MiB {'>=' if save[i] else '<'} "
                      f"{threshold:,.3g} (checkpointing as a whole)")
        elif r.ms_per_mib < threshold:
            why[i] = (f"{r.ms_per_mib:,.3g} ms/MiB < {threshold:,.3g}: leaving blocks unchecked "
                      "buys more time per MiB of the budget")
        else:
            est = sac_peak([*chosen, r.op])
            fits = est <= budget_bytes
            save[i] = fits
            if fits:
                chosen.append(r.op)
                why[i] = f"fits: est. peak {format_bytes(est)} <= {format_bytes(budget_bytes)}"
            else:
                why[i] = (f"would raise the est. peak to {format_bytes(est)} "
                          f"> {format_bytes(budget_bytes)}")
    if budget_bytes is not None and peak_bytes > budget_bytes:
        notes.append(f"the trace's own peak ({format_bytes(peak_bytes)}) is already above the "
                     f"budget ({format_bytes(budget_bytes)}): save nothing, and use a smaller "
                     "batch or more memory")
    dispatched = _dispatched_per_step(analysis)
    overhead_ms = dispatched * dispatch_overhead_us / 1e3
    gain = float(table.loc[save, "cost_ms"].sum())
    if save.any() and gain <= overhead_ms:
        notes.append(f"selective checkpointing would not pay off: the ops worth saving buy back "
                     f"{gain:,.3g} ms per step, its dispatch mode costs about {overhead_ms:,.3g} ms "
                     f"({dispatched:,.0f} ops x {dispatch_overhead_us:g} us): save nothing "
                     "(what to run instead weighs whole blocks: full, every_<k>, none)")
        why = np.where(save, "worth saving alone, but not the dispatch overhead", why)
        save[:] = False
    gain = float(table.loc[save, "cost_ms"].sum())
    est_step = step_ms - gain + (overhead_ms if save.any() else 0.0)
    est_peak = sac_peak(list(table.loc[save, "op"]))
    alternatives = _alternatives(blocks, step_ms, peak_of)
    recommended, note = _recommend(alternatives, save.any(), est_step, est_peak, budget_bytes)
    if note:
        notes.append(note)
    rank = np.where(table["candidate"], np.cumsum(table["candidate"].to_numpy()), 0)
    table = table.assign(rank=rank.astype(np.int64),
                         decision=np.where(save, "save", "recompute"), why=why)
    table = table[list(TABLE_COLUMNS)]
    save_ops = tuple(op_name(op) for op in table.loc[table["decision"] == "save", "op"])
    estimate = {"step_ms": step_ms, "peak_bytes": peak_bytes, "est_step_ms": est_step,
                "est_peak_bytes": est_peak, "recompute_ms": total_cost,
                "dispatch_overhead_ms": overhead_ms, "dispatched_ops": float(dispatched),
                "blocks_recompute_ms": block_ms, "blocks_kept_bytes": block_bytes}
    if analysis.recompute_found_by not in ("markers", "stack"):
        notes.append(f"recompute found by {analysis.recompute_found_by}: recompute costs are a "
                     "lower bound")
    source = str(analysis.path) if none is None else f"{analysis.path} and {none.path}"
    return Advice(table=table.reset_index(drop=True), save_ops=save_ops,
                  threshold_ms_per_mib=float(threshold),
                  cost_basis="GPU time" if use_gpu else "wall time", device=dev,
                  budget_bytes=budget_bytes, estimate=estimate, source=source,
                  notes=tuple(notes), recommended=recommended,
                  alternatives=alternatives)


def render_advice(advice: Advice, fmt: str = "table") -> str:
    """``table`` | ``markdown`` | ``json`` | ``csv``."""
    if fmt == "json":
        return json.dumps(advice.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return advice.table.to_csv(index=False, lineterminator="\n")
    check_format(fmt)
    t = advice.table
    headers = ["rank", "op", "calls/step", f"recompute ms/step ({advice.cost_basis})",
               "keeps alive/step", "ms per MiB", "advice", "why"]
    # every candidate; ops that keep nothing only when they cost >= 1% of recompute
    total = float(advice.estimate.get("recompute_ms", 0.0)) or 1.0
    shown = t[(t["rank"] > 0) | (t["cost_ms"] >= 0.01 * total)]
    rest = t.drop(shown.index)
    rows = [[str(int(r.rank)) if r.rank else "—", r.op, f"{r.calls:g}", format_ms(r.cost_ms),
             format_bytes(r.saved_bytes), format_ms(r.ms_per_mib), r.decision, r.why]
            for r in shown.itertuples(index=False)]
    if len(rest):
        rows.append(["—", f"({len(rest)} more ops that keep nothing alive)", "",
                     format_ms(rest["cost_ms"].sum()), "", "", "recompute", "each < 1% of recompute"])
    est = advice.estimate
    what = ("budget " + format_bytes(advice.budget_bytes) if advice.budget_bytes is not None
            else f"threshold {advice.threshold_ms_per_mib:,.3g} ms/MiB (recompute time per MiB "
                 "kept, checkpointing as a whole)")
    summary = [
        f"ckprof advise · {advice.source} · device {advice.device} · {what}",
        f"save: {', '.join(advice.save_ops) or 'nothing'}"
        + (" (keep full checkpointing)" if not advice.save_ops and advice.recommended == "full" else ""),
        f"estimate (per step): {est['step_ms']:,.3f} ms -> {est['est_step_ms']:,.3f} ms"
        + (f" (incl. ~{est['dispatch_overhead_ms']:,.3g} ms of SAC dispatch for "
           f"{est['dispatched_ops']:,.0f} ops)" if advice.save_ops else "")
        + f", peak {format_bytes(est['peak_bytes'])} -> {format_bytes(est['est_peak_bytes'])} "
        "(an ESTIMATE: measure it with the sweep policy below)",
        f"sweep policy: {advice.sweep_spec}",
    ]
    if advice.recommended != ADVISED and advice.save_ops:
        summary.append(f"recommended instead: {advice.recommended} (see the notes)")
    elif advice.recommended != ADVISED and advice.recommended != "full":
        summary.append(f"recommended: {advice.recommended} (see the notes)")
    alt = advice.alternatives
    if alt is not None and len(alt):
        summary.append("estimated whole-block policies: " + " · ".join(
            f"{r.policy} {r.est_step_ms:,.1f} ms {format_bytes(r.est_peak_bytes)}"
            for r in alt.itertuples(index=False)))
    if fmt == "markdown":
        lines = ["### ckprof advise", "", *(s + "  " for s in summary), "",
                 *markdown_table(headers, rows), "", "```python", advice.code().rstrip(), "```"]
    else:
        lines = [*summary, "", *text_table(headers, rows, "rlrrrrll"), "",
                 "Paste into your training script:", "", advice.code().rstrip()]
    if advice.notes:
        lines += ["", "Notes", *(f"  - {n}" for n in advice.notes)]
    return "\n".join(lines) + "\n"


def advice_section(analysis: Analysis) -> str:
    """The HTML report's section on what selective checkpointing should save
    (:func:`ckprof.report.html.render_report` ``sections=``): the recommendation, the
    estimated points and the ranked candidates; a short note when the trace cannot be
    advised on (no recompute, no memory)."""
    from html import escape

    from ckprof.errors import CkprofError
    from ckprof.report.html import table_html

    head = '<section id="advice"><h2>What should selective checkpointing save?</h2>'
    how = ("<b>How to read this:</b> each op type recompute reruns, ranked by milliseconds of "
           "recompute per MiB its outputs would keep alive if saved (<code>MUST_SAVE</code>) "
           "instead. Saving ops is one way to spend memory on speed, leaving whole blocks "
           "unchecked the other: the estimated points of <i>full</i>, <i>every_k</i> and "
           "<i>none</i> come from the same trace, and the recommendation is whichever is "
           "faster for the memory. Everything here assumes the trace is of full "
           "checkpointing; <code>ckprof sweep --policy ...,advised:TRACE</code> measures it.")
    try:
        adv = advise(analysis)
    except CkprofError as err:
        return (f'{head}<p class="missing">No advice: {escape(err.reason)}.</p></section>')
    est = adv.estimate
    rec = adv.recommended
    what = (f"save {escape(', '.join(adv.save_ops))} under selective checkpointing"
            if rec == ADVISED else f"run <b>{escape(rec)}</b>"
            + (f" rather than saving {escape(', '.join(adv.save_ops))}" if adv.save_ops else ""))
    parts = [head, f'<p class="how">{how}</p>',
             f"<p><b>Recommended:</b> {what} (device {escape(adv.device)}; threshold "
             f"{adv.threshold_ms_per_mib:,.3g} ms/MiB, {escape(adv.cost_basis)}).</p>"]
    points = [[escape(r.policy), format_ms(r.est_step_ms), escape(format_bytes(r.est_peak_bytes))]
              for r in (adv.alternatives.itertuples(index=False)
                        if adv.alternatives is not None else ())]
    if adv.save_ops:
        points.append([f"selective: {escape('+'.join(adv.save_ops))}", format_ms(est["est_step_ms"]),
                       escape(format_bytes(est["est_peak_bytes"]))])
    if points:
        parts += ["<h3>Estimated points (per step)</h3>",
                  table_html([("policy", "l"), ("step ms", "r"), ("peak", "r")], points)]
    cand = adv.table[adv.table["rank"] > 0]
    rows = [[str(int(r.rank)), escape(r.op), format_ms(r.cost_ms), escape(format_bytes(r.saved_bytes)),
             format_ms(r.ms_per_mib), escape(r.decision), escape(r.why)]
            for r in cand.itertuples(index=False)]
    if rows:
        parts += ["<h3>Candidates</h3>", table_html(
            [("rank", "r"), ("op", "l"), ("recompute ms/step", "r"), ("keeps alive/step", "r"),
             ("ms per MiB", "r"), ("advice", "l"), ("why", "l")], rows)]
    if adv.notes:
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in adv.notes) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def plot_advised_frontier(table: pd.DataFrame, advised: str | Sequence[str] = ADVISED, *,
                          budget_bytes: int | None = None, title: str | None = None) -> Any:
    """The sweep's memory-vs-time frontier plot (:func:`ckprof.strategy.sweep.plot_frontier`)
    with the advised policies' points ringed and labelled (gid ``advised:<name>``).
    ``advised``: a policy name, or several (default: every ``advised*`` policy)."""
    from ckprof.strategy.sweep import plot_frontier

    names = [advised] if isinstance(advised, str) else list(advised)
    if isinstance(advised, str) and advised == ADVISED:
        names = [p for p in table["policy"].astype(str) if p.startswith(ADVISED)] or names
    fig = plot_frontier(table, budget_bytes, None, title=title or
                        "Checkpointing policies: memory vs time (advised policies ringed)")
    ax = fig.axes[0]
    colors = ("#55A868", "#8172B3", "#CCB974", "#64B5CD")
    for i, name in enumerate(names):
        row = table[table["policy"] == name].dropna(subset=["peak_bytes"])
        if len(row) == 0:
            continue
        r = row.iloc[0]
        ax.scatter([r["step_ms"]], [r["peak_bytes"] / MIB], s=320, facecolors="none",
                   edgecolors=colors[i % len(colors)], linewidths=2.2, zorder=5,
                   gid=f"advised:{name}",
                   label=f"{name} ({'on' if bool(r['on_frontier']) else 'off'} the frontier)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return fig
