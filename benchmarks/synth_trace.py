"""Realistic synthetic GPU training traces of a chosen size, written as Kineto writes them.

Usage::

    python benchmarks/synth_trace.py --size-mb 1000 -o /tmp/big.json [--gzip] [--rank R]
    python benchmarks/synth_trace.py --steps 2 --layers 2 -o /tmp/small.json

What is simulated (one process, one CUDA device, a transformer with ``--layers`` blocks,
every ``--checkpoint-every``-th block wrapped in non-reentrant activation checkpointing,
AdamW, optional DDP all-reduce when ``--world-size`` > 1), step after step until the file
reaches ``--size-mb`` (or exactly ``--steps`` steps):

- main thread: ``ProfilerStep#N`` > ``ckprof::forward`` > ``ckprof::checkpoint::blkK`` >
  ``aten::*`` cpu_ops (``External id``, ``Record function id``, ``Sequence number``,
  ``Fwd thread id``, shapes) > ``cudaLaunchKernel`` (``cuda_runtime``, ``correlation``);
  ``ckprof::backward`` around the (blocked) ``loss.backward()``; ``ckprof::optimizer`` >
  ``Optimizer.step#AdamW.step`` > ``aten::_foreach_*``; ``ckprof::zero_grad`` >
  ``Optimizer.zero_grad#AdamW.zero_grad``; a ``cudaDeviceSynchronize`` ends the step.
- autograd thread: ``autograd::engine::evaluate_function: XBackward0`` > ``XBackward0`` >
  ops, and inside the first backward node of a checkpointed block
  ``ckprof::recompute::blkK`` > the recomputed forward ops (new ``Sequence number``;
  early stop: the block's last op is not recomputed).
- GPU (pid = device, tid = stream 7; NCCL on stream 20): kernels with ``correlation`` and
  ``External id``, ``gpu_user_annotation`` mirrors of the phase markers.
- flows: ``ac2g`` (launch -> kernel, id = correlation), ``fwdbwd`` (forward op ->
  backward node, id = Sequence number).
- ``[memory]`` instant events (CUDA, absolute ``Total Allocated``) and ``python_function``
  frames (``Python id`` / ``Python parent id``).

# NOTE [ Kineto file layout ]
# The file is laid out as Kineto writes it, because the loader's fast path relies on it:
# top-level keys (schemaVersion, deviceProperties, distributedInfo, ... and the ``ckprof``
# capture metadata) before ``"traceEvents": [``; each event starts on its own line with
# ``\n  {``; metadata (``ph: M``) events first, then ops / annotations / kernels / flows in
# timestamp order, then all ``[memory]`` events, then all ``python_function`` events, then
# the profiler span and the two global instants; ``traceName`` etc. after the array.
# ``--layout compact`` mirrors the field-per-group lines of the real GPU traces in
# ../shared/traces (Kineto up to ~2.5); ``--layout expanded`` mirrors torch 2.13 (one field
# per line, ``"dur": D\n    ,``).
#
# Memory stays constant in the file size: one step is simulated and sorted in memory,
# written, and its ``[memory]`` and ``python_function`` events spill to temporary files
# that are appended at the end. Output is deterministic for a given seed and options.
"""

from __future__ import annotations

import argparse
import gzip as gzip_mod
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

__all__ = ["SynthInfo", "main", "write_trace"]

DEVICE_NAMES = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
MIB = 1024 * 1024


def _ts(ns: int) -> str:
    """Kineto writes microseconds with exactly three decimals (ns resolution)."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def _q(s: str) -> str:
    return json.dumps(s)


# ---------------------------------------------------------------------------------------
# Event formatting (two layouts). Every formatter returns the text of one event starting
# with "  {" and ending with "}" (no separator).
# ---------------------------------------------------------------------------------------

def _fmt_x_compact(cat: str, qname: str, pid: int, tid: int, ts: int, dur: int, args: str) -> str:
    return (f'  {{\n    "ph": "X", "cat": "{cat}", "name": {qname}, "pid": {pid}, "tid": {tid},\n'
            f'    "ts": {_ts(ts)}, "dur": {_ts(dur)},\n    "args": {{\n      {args}\n    }}\n  }}')


def _fmt_x_expanded(cat: str, qname: str, pid: int, tid: int, ts: int, dur: int, args: str) -> str:
    return (f'  {{\n    "ph": "X",\n    "cat": "{cat}",\n    "name": {qname},\n    "pid": {pid},\n'
            f'    "tid": {tid},\n    "ts": {_ts(ts)},\n    "dur": {_ts(dur)}\n    ,\n'
            f'    "args": {{\n      {args}\n    }}\n  }}')


def _fmt_flow_compact(ph: str, cat: str, fid: int, pid: int, tid: int, ts: int) -> str:
    bp = ', "bp": "e"' if ph == "f" else ""
    return (f'  {{\n    "ph": "{ph}", "id": {fid}, "pid": {pid}, "tid": {tid}, "ts": {_ts(ts)},\n'
            f'    "cat": "{cat}", "name": "{cat}"{bp}\n  }}')


def _fmt_flow_expanded(ph: str, cat: str, fid: int, pid: int, tid: int, ts: int) -> str:
    bp = '\n    , "bp": "e"' if ph == "f" else "\n    "
    return (f'  {{\n    "ph": "{ph}",\n    "id": {fid},\n    "pid": {pid},\n    "tid": {tid},\n'
            f'    "ts": {_ts(ts)},\n    "cat": "{cat}",\n    "name": "{cat}"{bp}\n  }}')


def _fmt_mem_compact(pid: int, tid: int, ts: int, args: str) -> str:
    return (f'  {{\n    "ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]",\n'
            f'    "pid": {pid}, "tid": {tid},\n    "ts": {_ts(ts)},\n'
            f'    "args": {{\n      {args}\n    }}\n  }}')


def _fmt_mem_expanded(pid: int, tid: int, ts: int, args: str) -> str:
    return (f'  {{\n    "ph": "i",\n    \n    "cat": "cpu_instant_event",\n    "s": "t",\n'
            f'    "name": "[memory]",\n    "pid": {pid},\n    "tid": {tid},\n    "ts": {_ts(ts)}\n'
            f'    ,\n    "args": {{\n      {args}\n    }}\n  }}')


def _fmt_meta(name: str, pid: int | str, tid: int, ts: int, args: str) -> str:
    pid_s = pid if isinstance(pid, int) else _q(pid)
    return (f'  {{\n    "name": "{name}", "ph": "M", "ts": {_ts(ts)}, "pid": {pid_s}, "tid": {tid},\n'
            f'    "args": {{\n      {args}\n    }}\n  }}')


LAYOUTS: dict[str, tuple[Callable[..., str], Callable[..., str], Callable[..., str]]] = {
    "compact": (_fmt_x_compact, _fmt_flow_compact, _fmt_mem_compact),
    "expanded": (_fmt_x_expanded, _fmt_flow_expanded, _fmt_mem_expanded),
}


# ---------------------------------------------------------------------------------------
# Trace shapes (NOTE [ Trace shapes ]): the same training loop, with a different event mix.
# ---------------------------------------------------------------------------------------

# NOTE [ Trace shapes ]
# The loader's cost per byte depends on the mix of events, so the speed benchmark
# (benchmarks/bench_shapes.py) measures several shapes of one simulated training loop:
# - ``gpu``: the default; the mix of the real GPU traces (~27% cpu_op, 13% [memory],
#   10% Python frames, 11% kernels, ~290 bytes an event).
# - ``mixed``: issue 17's 300 MB trace: 31% cpu_op, 16% [memory], 12% Python frames,
#   12% runtime, 6% kernels, flows; each forward op also runs kernel-less view/empty
#   ops (with small allocations) and runtime calls that launch nothing.
# - ``memory``: allocator churn: every launch allocates and frees workspaces (about half
#   the events are ``[memory]`` instants).
# - ``stack``: ``with_stack`` with deep Python call stacks (about 60% ``python_function``
#   frames, long file paths), like traces of HF models.
# - ``compiled``: torch.compile training: every op launches several short Triton kernels
#   through ``cuLaunchKernel`` (``cuda_driver``); no Python frames.
# - ``legacy``: Kineto's 2021 layout (torch 1.8/1.9): categories ``Operator`` /
#   ``Runtime`` / ``Kernel``, integer microseconds, text tids (``"25738"``,
#   ``"stream 7"``), ``external id``, ``Call stack`` strings, ``async`` launch flows,
#   ``[memory]`` without ``Total Allocated``, no evaluate_function records, no Python
#   frames, no ckprof markers or metadata (phases come from the rules, recompute from
#   the sequence heuristic).
@dataclass(frozen=True)
class Shape:
    name: str
    views_per_op: int = 0        # kernel-less cpu_op children per forward op (small allocation each)
    side_runtime: int = 0        # runtime calls without a kernel after each launch
    churn_per_launch: int = 0    # workspace alloc/free pairs around each launch
    py_depth: int = 0            # extra Python frames between a module's forward and the op
    kernels_per_launch: int = 1  # > 1: Triton kernels per op, launched with cuLaunchKernel
    with_stack: bool = True
    legacy: bool = False


SHAPES: dict[str, Shape] = {
    "gpu": Shape("gpu"),
    "mixed": Shape("mixed", views_per_op=3, side_runtime=1, py_depth=2),
    "memory": Shape("memory", churn_per_launch=3),
    "stack": Shape("stack", py_depth=16),
    "compiled": Shape("compiled", kernels_per_launch=5, with_stack=False),
    "legacy": Shape("legacy", with_stack=False, legacy=True),
}

_LEGACY_CAT = {"cpu_op": "Operator", "user_annotation": "Operator", "cuda_runtime": "Runtime",
               "cuda_driver": "Runtime", "kernel": "Kernel"}
_LEGACY_STACK = ("/home/user/anaconda3/envs/kineto/lib/python3.8/site-packages/torch/nn/modules/module.py"
                 "(1051): _call_impl;/home/user/anaconda3/envs/kineto/lib/python3.8/site-packages/torch/nn/"
                 "modules/container.py(139): forward;/home/user/anaconda3/envs/kineto/lib/python3.8/"
                 "site-packages/torch/nn/modules/module.py(1051): _call_impl;train.py(57): forward;"
                 "train.py(112): <module>")
_STACK_FRAMES = (
    "torch/nn/modules/module.py(1784): _call_impl",
    "transformers/models/llama/modeling_llama.py(312): forward",
    "transformers/utils/generic.py(969): wrapper",
    "torch/nn/modules/module.py(1773): _wrapped_call_impl",
    "transformers/modeling_layers.py(94): __call__",
    "torch/_dynamo/eval_frame.py(1005): _fn",
    "accelerate/hooks.py(176): new_forward",
    "torch/nn/functional.py(2912): layer_norm",
    "torch/overrides.py(1720): handle_torch_function",
    "torch/utils/_contextlib.py(120): decorate_context",
)
_TRITON = ("triton_poi_fused__to_copy_add_mul_{i}", "triton_red_fused_native_layer_norm_{i}",
           "triton_per_fused_add_native_layer_norm_backward_{i}", "triton_poi_fused_gelu_{i}",
           "triton_tem_fused_addmm_{i}")


def _legacy_time(ns: int) -> int:
    """Kineto 2021 wrote integer microseconds."""
    return ns // 1000


def _fmt_x_legacy(cat: str, qname: str, pid: int, tid: str, ts: int, dur: int, args: str) -> str:
    t0, t1 = _legacy_time(ts), _legacy_time(ts + dur)
    return (f'  {{\n    "ph": "X", "cat": "{cat}", \n    "name": {qname}, "pid": {pid}, "tid": {tid},\n'
            f'    "ts": {t0}, "dur": {t1 - t0},\n    "args": {{\n      {args}\n    }}\n  }}')


def _fmt_flow_legacy(ph: str, fid: int, pid: int, tid: str, ts: int) -> str:
    bp = ', "bp": "e"' if ph == "f" else ""
    return (f'  {{\n    "ph": "{ph}", "id": {fid}, "pid": {pid}, "tid": {tid}, "ts": {_legacy_time(ts)},\n'
            f'    "cat": "async", "name": "launch"{bp}\n  }}')


def _fmt_mem_legacy(pid: int, tid: int, ts: int, args: str) -> str:
    return (f'  {{\n    "ph": "i", "s": "t", "name": "[memory]",\n    "pid": {pid}, "tid": {tid},\n'
            f'    "ts": {_legacy_time(ts)},\n    "args": {{\n      {args}\n    }}\n  }}')


# ---------------------------------------------------------------------------------------
# The model: per-op templates. A forward op is (name, kernels, shapes, backward node).
# ---------------------------------------------------------------------------------------

# kernel name templates (realistic, long C++ signatures as in real traces)
K_GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel__5x_cublas"
K_GEMM2 = "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_nn"
K_LN = ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"
        "(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)")
K_LN_BWD = ("void at::native::(anonymous namespace)::layer_norm_grad_input_kernel_vectorized<c10::BFloat16, float>"
            "(c10::BFloat16 const*, c10::BFloat16 const*, float const*, float const*, c10::BFloat16 const*, c10::BFloat16*, int)")
K_FLASH = ("void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
           "cutlass::bfloat16_t, pytorch_flash::Flash_kernel_traits<64, 128, 128, 4, cutlass::bfloat16_t> >, false, true, "
           "false, false, true, true, false, false>(pytorch_flash::Flash_fwd_params)")
K_FLASH_BWD = ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<pytorch_flash::Flash_bwd_kernel_traits"
               "<64, 128, 128, 8, 4, 2, 2, false, false, cutlass::bfloat16_t>, true, false, false, false, false, true, "
               "false>(pytorch_flash::Flash_bwd_params)")
K_ELEM = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
          "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, at::detail::Array<char*, 3>)")
K_GELU = ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
          "at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#4}::operator()() const::"
          "{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2> >(int, at::native::GeluCUDAKernelImpl"
          "(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#4}::"
          "operator()() const::{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2>)")
K_GELU_BWD = ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluBackwardCUDAKernelImpl"
              "(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#4}::"
              "operator()() const::{lambda(c10::BFloat16, c10::BFloat16)#1}, at::detail::Array<char*, 3> >(int, ...)")
K_REDUCE = ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
            "at::native::sum_functor<c10::BFloat16, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, "
            "unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::func_wrapper_t<float, ...>, unsigned int, float, 4, 4>)")
K_ADAM = ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
          "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
          "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool, float*, float*>"
          "(at::native::(anonymous namespace)::TensorListMetadata<4>, ...)")
K_NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"


@dataclass(frozen=True)
class FwdOp:
    name: str               # top-level aten op
    children: tuple[str, ...]   # cpu_op children (no kernel) before the launching child
    launcher: str           # the child (or self when == name) that launches the kernel
    kernel: str
    kernel_us: tuple[float, float]
    out_bytes: int
    bwd: str                # backward node name
    bwd_kernels: tuple[str, ...]
    dims: str               # "Input Dims" text


def _block_ops(hidden: int, tokens: int) -> tuple[FwdOp, ...]:
    h, t = hidden, tokens
    act = 2 * t * h
    lin = f"[[{t}, {h}], [{h}, {h}], [{h}]]"
    return (
        FwdOp("aten::layer_norm", ("aten::native_layer_norm",), "aten::native_layer_norm", K_LN, (18, 30),
              act, "NativeLayerNormBackward0", (K_LN_BWD, K_REDUCE), f"[[{t}, {h}], [], [{h}], [{h}], [], []]"),
        FwdOp("aten::linear", ("aten::t", "aten::transpose", "aten::as_strided"), "aten::addmm", K_GEMM, (90, 140),
              3 * act, "AddmmBackward0", (K_GEMM, K_GEMM2, K_REDUCE), lin),
        FwdOp("aten::scaled_dot_product_attention", ("aten::_scaled_dot_product_flash_attention",),
              "aten::_flash_attention_forward", K_FLASH, (120, 200), act, "ScaledDotProductFlashAttentionBackward0",
              (K_FLASH_BWD,), f"[[8, 16, {t // 8}, 64], [8, 16, {t // 8}, 64], [8, 16, {t // 8}, 64], [], [], [], []]"),
        FwdOp("aten::linear", ("aten::t", "aten::transpose", "aten::as_strided"), "aten::addmm", K_GEMM, (40, 70),
              act, "AddmmBackward0", (K_GEMM, K_GEMM2), lin),
        FwdOp("aten::add", (), "aten::add", K_ELEM, (8, 14), act, "AddBackward0", (), f"[[{t}, {h}], [{t}, {h}], []]"),
        FwdOp("aten::layer_norm", ("aten::native_layer_norm",), "aten::native_layer_norm", K_LN, (18, 30),
              act, "NativeLayerNormBackward0", (K_LN_BWD, K_REDUCE), f"[[{t}, {h}], [], [{h}], [{h}], [], []]"),
        FwdOp("aten::linear", ("aten::t", "aten::transpose", "aten::as_strided"), "aten::addmm", K_GEMM, (150, 230),
              4 * act, "AddmmBackward0", (K_GEMM, K_GEMM2, K_REDUCE), lin),
        FwdOp("aten::gelu", (), "aten::gelu", K_GELU, (20, 35), 4 * act, "GeluBackward0", (K_GELU_BWD,),
              f"[[{t}, {4 * h}], []]"),
        FwdOp("aten::linear", ("aten::t", "aten::transpose", "aten::as_strided"), "aten::addmm", K_GEMM, (150, 230),
              act, "AddmmBackward0", (K_GEMM, K_GEMM2, K_REDUCE), lin),
        FwdOp("aten::add", (), "aten::add", K_ELEM, (8, 14), act, "AddBackward0", (), f"[[{t}, {h}], [{t}, {h}], []]"),
    )


_PY_MODULE: dict[str, tuple[str, int]] = {
    "aten::layer_norm": ("torch/nn/modules/normalization.py", 229),
    "aten::linear": ("torch/nn/modules/linear.py", 134),
    "aten::scaled_dot_product_attention": ("model.py", 31),
    "aten::add": ("model.py", 58),
    "aten::gelu": ("torch/nn/modules/activation.py", 816),
}


@dataclass
class SynthInfo:
    """What :func:`write_trace` wrote (for tests and the benchmark)."""

    path: str
    bytes_written: int
    steps: int
    events: int
    memory_events: int
    python_events: int
    rank: int
    step_numbers: list[int] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Sim:
    """Simulates one rank's training steps and formats their events."""

    def __init__(self, *, seed: int, rank: int, world_size: int, layers: int, checkpoint_every: int,
                 slowdown: float, layout: str, hidden: int, tokens: int, microbatches: int = 1,
                 shape: Shape = SHAPES["gpu"]):
        self.shape = shape
        self.rng = random.Random(seed * 1_000_003 + rank)
        self.rank = rank
        self.world_size = world_size
        self.layers = layers
        self.ckpt = [checkpoint_every > 0 and i % checkpoint_every == 0 for i in range(layers)]
        self.slowdown = slowdown
        self.microbatches = max(1, microbatches)
        self.fmt_x, self.fmt_flow, self.fmt_mem = LAYOUTS[layout]
        self.ops = _block_ops(hidden, tokens)
        self.pid = 1_200_000 + 7919 * rank + self.rng.randrange(1000)
        self.main_tid = self.pid
        self.bwd_tid = self.pid + 31
        self.dev = rank % 8
        self.stream = 7
        self.nccl_stream = 20
        self.t = 1_712_195_495_000_000_000 + rank * 1_000_003 + self.rng.randrange(10_000_000)
        self.t0 = self.t
        self.gpu_free = self.t
        self.nccl_free = self.t
        self.ext = 1
        self.rfid = 0
        self.corr = 100_000
        self.seq = 1
        self.ev_idx = 0
        self.py_id = 0
        self.addr = 139_800_000_000_000
        self.alloc = 0  # bytes live now; starts at the baseline (set by write_trace)
        self.baseline = 0
        self.py_pending: list[tuple[str, int, int, int, list[tuple[str, int, int, int]]]] = []
        self.py_ops: list[tuple[str, int, int, int]] = []
        self.reserved = 0
        self.step_no = 1 + self.rng.randrange(3)
        # per step buffers
        self.events: list[tuple[int, int, int, str]] = []   # (ts, -dur, order, text)
        self.mem: list[str] = []
        self.py: list[tuple[int, int, str]] = []
        self.order = 0

    # -- primitives --------------------------------------------------------------------
    def _d(self, lo: float, hi: float) -> int:
        """A duration in ns drawn in [lo, hi] microseconds, scaled by the slowdown."""
        return int(self.rng.uniform(lo, hi) * 1000 * self.slowdown)

    def _emit(self, ts: int, dur: int, text: str) -> None:
        self.order += 1
        self.events.append((ts, -dur, self.order, text))

    def _x(self, cat: str, name: str, tid: int, ts: int, dur: int, args: str, pid: int | None = None) -> None:
        pid = self.pid if pid is None else pid
        if self.shape.legacy:
            self._x_legacy(cat, name, tid, ts, dur, args, pid)
            return
        self._emit(ts, dur, self.fmt_x(cat, _q(name), pid, tid, ts, dur, args))

    def _x_legacy(self, cat: str, name: str, tid: int, ts: int, dur: int, args: str, pid: int) -> None:
        """Kineto 2021: no ckprof markers, no evaluate_function records, no GPU annotations."""
        if (name.startswith(("ckprof::", "autograd::engine::evaluate_function"))
                or cat not in _LEGACY_CAT):
            return
        lcat = _LEGACY_CAT[cat]
        if lcat == "Operator":
            args = (f'"Device": {pid}, ' + args.replace(', "Ev Idx"', ', "Trace name": "PyTorch Profiler", '
                    '"Trace iteration": 0, "Ev Idx"') + f', "Call stack": "{_LEGACY_STACK}"')
            qtid = f'"{tid}"'
        else:
            args = args.replace('"External id"', '"external id"')
            qtid = f'"stream {tid}"' if lcat == "Kernel" else f'"{tid}"'
        t0, t1 = _legacy_time(ts), _legacy_time(ts + dur)
        self._emit(t0 * 1000, -(t1 - t0) * 1000, _fmt_x_legacy(lcat, _q(name), pid, qtid, ts, dur, args))

    def _flow(self, ph: str, cat: str, fid: int, pid: int, tid: int, ts: int) -> None:
        if not self.shape.legacy:
            self._emit(ts, 0, self.fmt_flow(ph, cat, fid, pid, tid, ts))
        elif cat == "ac2g":  # 2021 traces had launch flows only
            qtid = f'"stream {tid}"' if ph == "f" else str(tid)
            self._emit(_legacy_time(ts) * 1000, 0, _fmt_flow_legacy(ph, fid, pid, qtid, ts))

    def _cpu_args(self, seq: int | None, dims: str | None, fwd_tid: int = 0) -> str:
        ext = self.ext
        self.ext += 1
        self.ev_idx += 1
        self.rfid += 1
        s = f'"External id": {ext},'
        if seq is not None:
            s += f'"Sequence number": {seq}, "Fwd thread id": {fwd_tid}, '
        s += f'"Record function id": {self.rfid}'
        if dims is not None:
            s += f', "Input Dims": {dims}'
        return s + f', "Ev Idx": {self.ev_idx}'

    def _mem(self, tid: int, ts: int, nbytes: int) -> None:
        self.alloc += nbytes
        self.reserved = max(self.reserved, ((self.alloc + 2 * MIB - 1) // (2 * MIB)) * 2 * MIB)
        self.addr += 512 if nbytes > 0 else 0
        self.ev_idx += 1
        if self.shape.legacy:  # 2021: no totals
            args = f'"Device Type": 1, "Device Id": {self.dev}, "Bytes": {nbytes}'
            self.mem.append(_fmt_mem_legacy(self.pid, tid, ts, args))
            return
        args = (f'"Total Reserved": {self.reserved}, "Total Allocated": {self.alloc}, "Bytes": {nbytes}, '
                f'"Device Id": {self.dev}, "Device Type": 1, "Addr": {self.addr}, "Ev Idx": {self.ev_idx}')
        self.mem.append(self.fmt_mem(self.pid, tid, ts, args))

    def _pyframe(self, name: str, tid: int, ts: int, dur: int, parent: int | None) -> int:
        self.py_id += 1
        if not self.shape.with_stack:
            return self.py_id
        self.ev_idx += 1
        par = "null" if parent is None else str(parent)
        args = f'"Python parent id": {par}, "Python id": {self.py_id}, "Ev Idx": {self.ev_idx}'
        self.py.append((ts, -dur, self.fmt_x("python_function", _q(name), self.pid, tid, ts, dur, args)))
        return self.py_id

    def _launch(self, tid: int, kernel: str, k_us: tuple[float, float], ext: int, *,
                stream: int | None = None) -> None:
        """One op's launch(es) at self.t, as its trace shape has them (NOTE [ Trace shapes ])."""
        sh = self.shape
        workspaces = [(c + 1) * 2 * MIB for c in range(sh.churn_per_launch)]
        for ws in workspaces:
            self._mem(tid, self.t, ws)
        if sh.kernels_per_launch == 1 or stream is not None:
            self._launch_one(tid, kernel, k_us, ext, stream=stream)
        else:  # compiled: the op's work split over short Triton kernels
            n = sh.kernels_per_launch
            short = (max(1.0, k_us[0] / n), max(2.0, k_us[1] / n))
            for i in range(n):
                name = _TRITON[i % len(_TRITON)].format(i=(self.corr // 11) % 40)
                self._launch_one(tid, name, short, ext, runtime=("cuda_driver", "cuLaunchKernel"))
        for _ in range(sh.side_runtime):  # runtime calls that launch nothing
            start = self.t
            self.t += self._d(1, 2)
            self._x("cuda_runtime", "cudaStreamIsCapturing", tid, start, self.t - start,
                    f'"External id": {ext},      "cbid": 317, "correlation": {self.corr}')
            self.corr += 1
            self.t += self._d(0.3, 0.8)
        for ws in workspaces:
            self._mem(tid, self.t, -ws)

    def _launch_one(self, tid: int, kernel: str, k_us: tuple[float, float], ext: int, *,
                    stream: int | None = None,
                    runtime: tuple[str, str] = ("cuda_runtime", "cudaLaunchKernel")) -> None:
        """cudaLaunchKernel on the CPU at self.t, the kernel on the GPU, the ac2g flow."""
        corr = self.corr
        self.corr += 1
        rt_start = self.t
        rt_dur = self._d(3, 7)
        stream = self.stream if stream is None else stream
        free = self.nccl_free if stream == self.nccl_stream else self.gpu_free
        k_start = max(free, rt_start + self._d(4, 9))
        k_dur = self._d(*k_us)
        if stream == self.nccl_stream:
            self.nccl_free = k_start + k_dur
        else:
            self.gpu_free = k_start + k_dur
        self._x(runtime[0], runtime[1], tid, rt_start, rt_dur,
                f'"External id": {ext},      "cbid": 211, "correlation": {corr}')
        self._flow("s", "ac2g", corr, self.pid, tid, rt_start)
        grid = f"[{self.rng.randrange(1, 512)}, {self.rng.randrange(1, 64)}, 1]"
        self._x("kernel", kernel, stream, k_start, k_dur,
                f'"External id": {ext},      "queued": 0, "device": {self.dev}, "context": 1,      '
                f'"stream": {stream}, "correlation": {corr},      "registers per thread": 128,      '
                f'"shared memory": 49152,      "blocks per SM": 1.939394,      "warps per SM": 15.515152,      '
                f'"grid": {grid},      "block": [256, 1, 1],      "est. achieved occupancy %": 12', pid=self.dev)
        self._flow("f", "ac2g", corr, self.dev, stream, k_start)
        self.t = rt_start + rt_dur + self._d(1, 3)

    def _fwd_op(self, op: FwdOp, tid: int, *, fwd_flows: list[tuple[int, int, str]] | None) -> int:
        """One forward op (possibly a recompute). Returns its Sequence number."""
        seq = self.seq
        self.seq += 1
        self.t += 600  # Python between ops: room for its frames (they nest, never overlap)
        start = self.t
        self.t += self._d(4, 10)
        args = self._cpu_args(seq, op.dims)
        ext = self.ext - 1
        if fwd_flows is not None:
            self._flow("s", "fwdbwd", seq, self.pid, tid, start)
            fwd_flows.append((seq, ext, op.bwd))
        kids: list[tuple[str, int, int, str]] = []
        for child in op.children:
            c_start = self.t
            self.t += self._d(2, 6)
            kids.append((child, c_start, self.t - c_start, self._cpu_args(None, None)))
            self.t += self._d(0.5, 1)
        small = 0
        for v in range(self.shape.views_per_op):  # kernel-less ops (mixed shape)
            c_start = self.t
            self.t += self._d(1, 3)
            if v % 2 == 0:
                small += 512 * (v + 1)
                self._mem(tid, self.t, 512 * (v + 1))
            name = ("aten::empty", "aten::view", "aten::detach", "aten::reshape")[v % 4]
            kids.append((name, c_start, self.t - c_start, self._cpu_args(None, None)))
            self.t += self._d(0.3, 0.8)
        if op.launcher != op.name:
            l_start = self.t
            self.t += self._d(3, 6)
            l_args = self._cpu_args(seq, op.dims)
            l_ext = self.ext - 1
            self._mem(tid, self.t, op.out_bytes)
            self._launch(tid, op.kernel, op.kernel_us, l_ext)
            self.t += self._d(1, 3)
            kids.append((op.launcher, l_start, self.t - l_start, l_args))
        else:
            self._mem(tid, self.t, op.out_bytes)
            self._launch(tid, op.kernel, op.kernel_us, ext)
        if small:
            self._mem(tid, self.t, -small)
        self.t += self._d(1, 4)
        self._x("cpu_op", op.name, tid, start, self.t - start, args)
        self.py_ops.append((op.name, tid, start, self.t - start))
        for name, c_start, c_dur, c_args in kids:
            self._x("cpu_op", name, tid, c_start, c_dur, c_args)
        self.t += 600
        return seq

    def _annotation_open(self) -> int:
        start = self.t
        self.t += self._d(2, 5)
        return start

    def _annotation_close(self, name: str, tid: int, start: int, *, gpu_start: int | None = None) -> None:
        self.t += self._d(2, 5)
        self._x("user_annotation", name, tid, start, self.t - start, self._cpu_args(None, None))
        if gpu_start is not None and self.gpu_free > gpu_start:
            self._x("gpu_user_annotation", name, self.stream, gpu_start, self.gpu_free - gpu_start,
                    f'"External id": {self.ext - 1}', pid=self.dev)

    # -- one training step -------------------------------------------------------------
    def step(self) -> int:
        """Simulate one step into the buffers. Returns its ProfilerStep number."""
        step_no = self.step_no
        self.step_no += 1
        main, bwd = self.main_tid, self.bwd_tid
        step_start = self._annotation_open()
        py_step = self._pyframe_open()
        for _ in range(self.microbatches):
            self._forward_backward(main, bwd)

        # optimizer + zero_grad
        opt_start = self._annotation_open()
        gpu_opt = max(self.gpu_free, opt_start)
        inner = self._annotation_open()
        for fe in ("aten::_foreach_add_", "aten::_foreach_lerp_", "aten::_foreach_mul_",
                   "aten::_foreach_addcmul_", "aten::_foreach_sqrt", "aten::_foreach_div_",
                   "aten::_foreach_addcdiv_"):
            f_start = self.t
            self.t += self._d(5, 10)
            f_args = self._cpu_args(None, None)
            for _ in range(max(1, self.layers // 4)):
                self._launch(main, K_ADAM, (30, 80), self.ext - 1)
            self._x("cpu_op", fe, main, f_start, self.t - f_start, f_args)
        self._annotation_close("Optimizer.step#AdamW.step", main, inner)
        self._annotation_close("ckprof::optimizer", main, opt_start, gpu_start=gpu_opt)
        zg = self._annotation_open()
        inner = self._annotation_open()
        self.t += self._d(20, 40)
        self._annotation_close("Optimizer.zero_grad#AdamW.zero_grad", main, inner)
        self._annotation_close("ckprof::zero_grad", main, zg)
        # drain the GPU so that the step's kernels end inside it
        s_start = self.t
        self.t = max(self.t + self._d(3, 6), self.gpu_free + self._d(2, 4), self.nccl_free)
        self._x("cuda_runtime", "cudaDeviceSynchronize", main, s_start, self.t - s_start,
                f'"External id": {self.ext},      "cbid": 165, "correlation": {self.corr}')
        self.corr += 1
        self._annotation_close(f"ProfilerStep#{step_no}", main, step_start)
        self._pyframe_close(py_step, step_start)
        self.t += self._d(5, 15)
        return step_no

    def _forward_backward(self, main: int, bwd: int) -> None:
        """One micro-batch: forward (+ loss) on the main thread, backward on the autograd
        thread while the main thread waits inside ckprof::backward."""
        fwd_flows: list[tuple[int, int, str]] = []

        # forward
        fwd_start = self._annotation_open()
        gpu_fwd = max(self.gpu_free, fwd_start)
        for layer in range(self.layers):
            region = f"blk{layer}"
            l_start = self._annotation_open() if self.ckpt[layer] else self.t
            py_l = self.t
            alloc_before = self.alloc
            for op in self.ops:
                self._fwd_op(op, main, fwd_flows=fwd_flows)
            if self.ckpt[layer]:
                # non-reentrant checkpoint frees the block's intermediates, keeps its input
                self._mem(main, self.t, -(self.alloc - alloc_before - self.ops[-1].out_bytes))
                self._annotation_close(f"ckprof::checkpoint::{region}", main, l_start)
            self.py_pending.append(("model.py(57): forward", main, py_l, self.t - py_l, self.py_ops))
            self.py_ops = []
        # loss
        loss_ext = self.ext
        l_start = self.t
        self.t += self._d(3, 6)
        args = self._cpu_args(self.seq, "[[8, 512, 50304], [8, 512], [], [], [], []]")
        self._flow("s", "fwdbwd", self.seq, self.pid, main, l_start)
        fwd_flows.append((self.seq, loss_ext, "NllLossBackward0"))
        self.seq += 1
        self._launch(main, K_REDUCE, (60, 90), loss_ext)
        self._x("cpu_op", "aten::cross_entropy_loss", main, l_start, self.t - l_start, args)
        self._annotation_close("ckprof::forward", main, fwd_start, gpu_start=gpu_fwd)

        # backward: main thread blocked inside ckprof::backward, work on the autograd thread
        bwd_start = self._annotation_open()
        gpu_bwd = max(self.gpu_free, bwd_start)
        self.t += self._d(10, 20)
        fwd_flows.reverse()
        per_layer = len(self.ops)
        # node index -> layer (the loss node first)
        for idx, (seq, _ext, node) in enumerate(fwd_flows):
            layer = None if idx == 0 else self.layers - 1 - (idx - 1) // per_layer
            first_of_layer = layer is not None and (idx - 1) % per_layer == 0
            e_start = self.t
            self._flow("f", "fwdbwd", seq, self.pid, bwd, e_start)
            e_args = self._cpu_args(seq, None, fwd_tid=1)
            self.t += self._d(3, 6)
            n_start = self.t
            n_args = self._cpu_args(seq, None, fwd_tid=1)
            self.t += self._d(2, 4)
            if first_of_layer and layer is not None and self.ckpt[layer]:
                self._recompute(layer, bwd)
            op = self.ops[per_layer - 1 - (idx - 1) % per_layer] if idx else None
            kernels = op.bwd_kernels if op is not None else (K_ELEM,)
            for kname in kernels:
                k_start = self.t
                self.t += self._d(3, 6)
                k_args = self._cpu_args(None, None)
                k_ext = self.ext - 1
                self._mem(bwd, self.t, (op.out_bytes if op else 4096))
                self._launch(bwd, kname, op.kernel_us if op else (20, 40), k_ext)
                name = "aten::mm" if kname in (K_GEMM, K_GEMM2) else (
                    "aten::sum" if kname == K_REDUCE else "aten::mul")
                self._x("cpu_op", name, bwd, k_start, self.t - k_start, k_args)
            self.t += self._d(1, 3)
            self._x("cpu_op", node, bwd, n_start, self.t - n_start, n_args)
            # activation freed once its gradient is computed
            if op is not None:
                self._mem(bwd, self.t, -op.out_bytes)
            self.t += self._d(2, 5)
            self._x("cpu_op", f"autograd::engine::evaluate_function: {node}", bwd, e_start,
                    self.t - e_start, e_args)
            last_of_layer = layer is not None and (idx - 1) % per_layer == per_layer - 1
            if last_of_layer and self.world_size > 1:
                c_start = self.t
                self.t += self._d(5, 10)
                c_args = self._cpu_args(None, None)
                self._launch(bwd, K_NCCL, (200, 600), self.ext - 1, stream=self.nccl_stream)
                self._x("user_annotation", "nccl:all_reduce", bwd, c_start, self.t - c_start, c_args)
        # gradients of activations are released when backward ends
        leftover = self.alloc - self.baseline
        if leftover:
            self._mem(bwd, self.t, -leftover)
        self.t = max(self.t, self.nccl_free)
        self._annotation_close("ckprof::backward", main, bwd_start, gpu_start=gpu_bwd)

    def _recompute(self, layer: int, tid: int) -> None:
        """Recompute of a checkpointed block inside its first backward node (early stop:
        the last op, whose output nobody saved, is not run again)."""
        py_start = self.t
        r_start = self._annotation_open()
        self.py_ops_saved, self.py_ops = self.py_ops, []
        for op in self.ops[:-1]:
            self._fwd_op(op, tid, fwd_flows=None)
        self._annotation_close(f"ckprof::recompute::blk{layer}", tid, r_start)
        recomputed, self.py_ops = self.py_ops, self.py_ops_saved
        # the recomputed intermediates are consumed by this block's backward; free them
        # (the block's own backward nodes free the per-op activations as they run)
        self.t += self._d(1, 2)
        unpack = self._pyframe("torch/utils/checkpoint.py(1593): unpack_hook", tid, py_start,
                               self.t - py_start, None)
        rfn = self._pyframe("torch/utils/checkpoint.py(1564): recompute_fn", tid, py_start + 500,
                            self.t - py_start - 1000, unpack)
        for op_name, op_tid, op_ts, op_dur in recomputed:
            self._op_frames(op_name, op_tid, op_ts, op_dur, rfn)

    # python frames of the step on the main thread
    def _pyframe_open(self) -> int:
        self.py_pending = []
        self.py_ops = []
        return self.t

    def _pyframe_close(self, py_step_start: int, step_start: int) -> None:
        root = self._pyframe("train.py(112): <module>", self.main_tid, step_start - 1500,
                             self.t - step_start + 3000, None)
        step = self._pyframe("train.py(87): train_step", self.main_tid, step_start - 1000,
                             self.t - step_start + 2000, root)
        for name, tid, ts, dur, ops in self.py_pending:
            call = self._pyframe("torch/nn/modules/module.py(1773): _wrapped_call_impl", tid, ts,
                                 dur, step)
            layer = self._pyframe(name, tid, ts + 200, max(dur - 400, 0), call)
            for op_name, op_tid, op_ts, op_dur in ops:
                self._op_frames(op_name, op_tid, op_ts, op_dur, layer)
        self.py_pending = []

    def _op_frames(self, op_name: str, tid: int, ts: int, dur: int, parent: int) -> None:
        """with_stack frames around one aten op: module call > functional > built-in."""
        module, line = _PY_MODULE.get(op_name, ("torch/functional.py", 77))
        outer = self._pyframe(f"{module}({line}): forward", tid, ts - 250, dur + 500, parent)
        for k in range(min(self.shape.py_depth, 18)):  # deep stacks: nested 10 ns apart
            off = 10 * (k + 1)
            outer = self._pyframe(_STACK_FRAMES[k % len(_STACK_FRAMES)], tid, ts - 250 + off,
                                  dur + 500 - 2 * off, outer)
        short = op_name.split("::")[-1]
        self._pyframe(f"<built-in method {short} of PyCapsule object at 0x7f3a2c1b5e30>", tid, ts - 50,
                      dur + 100, outer)


def _header(sim: _Sim, ckprof_meta: dict, distributed: dict, trace_id: str) -> str:
    dev = DEVICE_NAMES[sim.rank % len(DEVICE_NAMES)]
    props = ",\n".join(
        f'    {{\n      "id": {i}, "name": "{dev}", "totalGlobalMem": 85045870592,\n'
        f'      "computeMajor": 9, "computeMinor": 0,\n'
        f'      "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048,\n'
        f'      "regsPerBlock": 65536, "warpSize": 32,\n'
        f'      "sharedMemPerBlock": 49152, "numSms": 132\n'
        f'    , "regsPerMultiprocessor": 65536, "sharedMemPerBlockOptin": 232448, '
        f'"sharedMemPerMultiprocessor": 233472\n    }}' for i in range(8))
    if sim.shape.legacy:  # 2021: no distributedInfo, no ckprof metadata
        return ("{\n  \"schemaVersion\": 1,\n  \"deviceProperties\": [\n" + props + "\n  ],\n"
                "  \"traceEvents\": [\n")
    return ("\n{\n  \"schemaVersion\": 1,\n  \"deviceProperties\": [\n" + props + "\n  ],\n"
            "  \"cupti_version\": 24,\n  \"cuda_runtime_version\": 12080,\n"
            "  \"with_flops\": 0,\n  \"record_shapes\": 1,\n"
            f"  \"with_stack\": {int(sim.shape.with_stack)},\n  \"profile_memory\": 1,\n"
            "  \"with_modules\": 0,\n  \"cuda_driver_version\": 12080,\n"
            f"  \"trace_id\": \"{trace_id}\",\n"
            f"  \"distributedInfo\": {json.dumps(distributed)},\n"
            f"  \"ckprof\": {json.dumps(ckprof_meta)},\n"
            "  \"traceEvents\": [\n")


def _metadata_events(sim: _Sim) -> list[str]:
    t = sim.t0
    p = sim.pid
    ev = [
        _fmt_meta("process_name", p, 0, t, '"name": "python"'),
        _fmt_meta("process_labels", p, 0, t, '"labels": "CPU"'),
        _fmt_meta("process_sort_index", p, 0, t, f'"sort_index": {p}'),
        _fmt_meta("process_name", sim.dev, 0, t, '"name": "python"'),
        _fmt_meta("process_labels", sim.dev, 0, t, f'"labels": "GPU {sim.dev}"'),
        _fmt_meta("process_sort_index", sim.dev, 0, t, f'"sort_index": {5000000 + sim.dev}'),
        _fmt_meta("thread_name", p, sim.main_tid, t, f'"name": "thread {sim.main_tid} (python)"'),
        _fmt_meta("thread_sort_index", p, sim.main_tid, t, f'"sort_index": {sim.main_tid}'),
        _fmt_meta("thread_name", p, sim.bwd_tid, t, f'"name": "thread {sim.bwd_tid} (pt_autograd_0)"'),
        _fmt_meta("thread_sort_index", p, sim.bwd_tid, t, f'"sort_index": {sim.bwd_tid}'),
        _fmt_meta("thread_name", sim.dev, sim.stream, t, f'"name": "stream {sim.stream} "'),
        _fmt_meta("thread_sort_index", sim.dev, sim.stream, t, f'"sort_index": {sim.stream}'),
    ]
    if sim.world_size > 1:
        ev.append(_fmt_meta("thread_name", sim.dev, sim.nccl_stream, sim.t0,
                            f'"name": "stream {sim.nccl_stream} "'))
    return ev


def _tail_events(sim: _Sim) -> list[str]:
    t0, dur = sim.t0, sim.t - sim.t0
    return [
        (f'  {{\n    "ph": "X", "cat": "Trace", "ts": {_ts(t0)}, "dur": {_ts(dur)},\n'
         f'    "pid": "Spans", "tid": "PyTorch Profiler",\n    "name": "PyTorch Profiler (0)",\n'
         f'    "args": {{\n      "Op count": 0\n    }}\n  }}'),
        _fmt_meta("process_sort_index", "Spans", 0, t0, '"sort_index": 536870912'),
        (f'  {{\n    "name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g",\n'
         f'    "pid": "Traces", "tid": "Trace PyTorch Profiler", "ts": {_ts(t0)}\n  }}'),
        (f'  {{\n    "name": "Record Window End", "ph": "i", "s": "g",\n'
         f'    "pid": "", "tid": "", "ts": {_ts(sim.t)}\n  }}'),
    ]


def write_trace(path: str | os.PathLike[str], *, size_mb: float | None = None, steps: int | None = None,
                seed: int = 0, rank: int = 0, world_size: int = 1, layers: int = 24,
                checkpoint_every: int = 2, slowdown: float = 1.0, layout: str = "compact",
                gzip: bool = False, gzip_level: int = 1, hidden: int = 2048, tokens: int = 4096,
                write_rank_metadata: bool = True, microbatches: int = 1,
                shape: str = "gpu") -> SynthInfo:
    """Write a synthetic Kineto GPU training trace.

    Stops after ``steps`` steps, or after the step at which the file reaches ``size_mb``
    MiB of uncompressed text (at least one step). Memory use is bounded by one step.
    ``slowdown`` multiplies every CPU and GPU duration (a straggler rank).
    ``write_rank_metadata=False`` leaves the rank out of ``distributedInfo`` and the
    ckprof metadata (to test rank-from-file-name). ``microbatches`` > 1 runs that many
    forward/backward passes (gradient accumulation) before each optimizer step.
    ``shape`` picks the event mix (one of ``SHAPES``, NOTE [ Trace shapes ]).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}")
    if (size_mb is None) == (steps is None):
        raise ValueError("give exactly one of size_mb or steps")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}")
    started = time.perf_counter()
    path = os.fspath(path)
    sim = _Sim(seed=seed, rank=rank, world_size=world_size, layers=layers,
               checkpoint_every=checkpoint_every, slowdown=slowdown, layout=layout,
               hidden=hidden, tokens=tokens, microbatches=microbatches, shape=SHAPES[shape])
    baseline = 12 * layers * hidden * hidden * 2 * 4  # bf16 params + fp32 master, grads, 2 Adam moments
    sim.alloc = sim.baseline = baseline
    regions = [f"blk{i}" for i in range(layers) if sim.ckpt[i]]
    ckprof_meta = {
        "ckprof_version": "0.1.0", "torch_version": "2.13.0+cu128", "python_version": "3.11.7",
        "device": f"cuda:{sim.dev}", "world_size": world_size, "markers": True,
        "schedule": {"wait": 1, "warmup": 1, "active": steps or 0, "repeat": 1, "skip_first": 0},
        "memory_baseline": {f"cuda:{sim.dev}": {"bytes": baseline, "method": "torch.cuda.memory_allocated",
                                                 "counter_absolute": True}},
        "checkpoint": {"early_stop": True,
                       "regions": {r: {"use_reentrant": False, "sac": False} for r in regions}},
        "synthetic": {"generator": "benchmarks/synth_trace.py", "seed": seed, "slowdown": slowdown},
    }
    distributed = {"backend": "nccl", "world_size": world_size, "pg_count": 1, "nccl_version": "2.21.5"}
    if write_rank_metadata:
        ckprof_meta["rank"] = rank
        distributed = {"backend": "nccl", "rank": rank, **{k: v for k, v in distributed.items() if k != "backend"}}
    trace_id = f"{random.Random(seed * 31 + rank).getrandbits(128):032X}"

    out_dir = os.path.dirname(os.path.abspath(path))
    raw: IO[bytes]
    raw = gzip_mod.open(path, "wb", compresslevel=gzip_level) if gzip else open(path, "wb")  # noqa: SIM115
    written = 0
    n_events = n_mem = n_py = 0
    step_numbers: list[int] = []
    target = None if size_mb is None else int(size_mb * MIB)
    with raw, tempfile.TemporaryFile(dir=out_dir) as mem_f, tempfile.TemporaryFile(dir=out_dir) as py_f:
        def put(f: IO[bytes], text: str) -> int:
            b = text.encode()
            f.write(b)
            return len(b)

        written += put(raw, _header(sim, ckprof_meta, distributed, trace_id))
        meta = _metadata_events(sim)
        written += put(raw, ",\n".join(meta))
        n_events += len(meta)
        spilled = 0
        while True:
            sim.events, sim.mem, sim.py = [], [], []
            step_numbers.append(sim.step())
            sim.events.sort()
            sim.py.sort()
            n_events += len(sim.events)
            n_mem += len(sim.mem)
            n_py += len(sim.py)
            written += put(raw, "".join(",\n" + e[3] for e in sim.events))
            spilled += put(mem_f, "".join(",\n" + m for m in sim.mem))
            spilled += put(py_f, "".join(",\n" + p[2] for p in sim.py))
            if steps is not None and len(step_numbers) >= steps:
                break
            if target is not None and written + spilled >= target:
                break
        for f in (mem_f, py_f):
            f.seek(0)
            shutil.copyfileobj(f, raw, 16 * MIB)
        written += spilled
        tail = _tail_events(sim)
        n_events += len(tail)
        written += put(raw, "".join(",\n" + e for e in tail))
        written += put(raw, f'\n  ],\n  "traceName": "/tmp/rank{rank}.pt.trace.json",\n'
                            f'  "displayTimeUnit": "ms",\n  "baseTimeNanoseconds": 1712195400000000000\n}}\n')
    return SynthInfo(path=path, bytes_written=written, steps=len(step_numbers),
                     events=n_events + n_mem + n_py, memory_events=n_mem, python_events=n_py, rank=rank,
                     step_numbers=step_numbers, regions=regions, seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="file to write (.json or .json.gz)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--size-mb", type=float, help="uncompressed size to reach, MiB (default 100)")
    g.add_argument("--steps", type=int, help="write exactly this many ProfilerSteps")
    ap.add_argument("--gzip", action="store_true", help="gzip the output (also implied by a .gz name)")
    ap.add_argument("--gzip-level", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world-size", type=int, default=None, help="default: max(8, rank + 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--checkpoint-every", type=int, default=2, help="checkpoint every k-th block (0: none)")
    ap.add_argument("--slowdown", type=float, default=1.0, help="scale all durations (straggler rank)")
    ap.add_argument("--microbatches", type=int, default=1, help="forward/backward passes per optimizer step")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="compact")
    ap.add_argument("--shape", choices=list(SHAPES), default="gpu",
                    help="event mix (NOTE [ Trace shapes ]): gpu, mixed, memory, stack, compiled, legacy")
    ap.add_argument("--no-rank-metadata", action="store_true", help="leave the rank out of the file")
    a = ap.parse_args(argv)
    size = a.size_mb if (a.size_mb is not None or a.steps is not None) else 100.0
    info = write_trace(a.output, size_mb=size if a.steps is None else None, steps=a.steps, seed=a.seed,
                       rank=a.rank, world_size=a.world_size or max(8, a.rank + 1), layers=a.layers,
                       checkpoint_every=a.checkpoint_every, slowdown=a.slowdown, layout=a.layout,
                       gzip=a.gzip or a.output.endswith(".gz"), gzip_level=a.gzip_level,
                       write_rank_metadata=not a.no_rank_metadata, microbatches=a.microbatches,
                       shape=a.shape)
    print(f"wrote {info.path}: {info.bytes_written / MIB:.1f} MiB uncompressed, {info.steps} steps, "
          f"{info.events:,} events ({info.memory_events:,} [memory], {info.python_events:,} python) "
          f"in {info.seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
