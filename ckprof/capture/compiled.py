"""What torch.compile recomputes in each compiled backward, recorded at compile time.

Contract: :class:`CompileWatcher` (``start()`` / ``stop()``, re-entrant by count) watches
torch.compile (inductor) while a capture runs and :meth:`CompileWatcher.metadata`
returns the ``compiled`` object of the trace metadata (docs/ARCHITECTURE.md)::

    {"watched": true,
     "graphs": {"<FX graph cache key>": {
         "source": "compiled" | "ckprof-cache",
         "graph_id": 3, "kernel_profile": false,
         "regions": ["blocks.0", "blocks.1", "(partitioner)"],
         "calls": [[trace_name, kind, cls, region, recompute_nodes, backward_nodes], ...]}},
     "unknown": ["<key>", ...],          # backward graphs loaded from torch's cache, no record
     "errors": ["..."]}

With torch's FX graph cache off the trace prints ``## Call CompiledFxGraph None ##``:
such records are stored as ``nokey-<n>`` with ``"keyless": true`` and the analysis
matches them by their kernel sequence.

``calls`` lists the kernel calls of the compiled backward in the order its generated
code makes them: ``trace_name`` is the name the call has in a profiler trace ("" when
it shows no event of its own: a C++ kernel without ``cpp.enable_kernel_profile``),
``kind`` is ``extern`` / ``cpp`` / ``triton`` / ``other``, ``cls`` is ``r`` (every
node it computes is a recomputed forward node), ``m`` (recompute fused with backward
work), ``b`` (backward only) or ``v`` (views only); ``region`` indexes ``regions`` for
``r`` and ``m`` calls (the region most of its recomputed nodes belong to), else -1.

Nothing here changes what torch.compile does: no config is set, no graph is edited,
the generated code is byte-for-byte what it would be without ckprof.

# NOTE [ Compiled recompute ]
# Under torch.compile, AOTAutograd traces forward+backward into one joint graph; nodes
# traced while running the forward carry ``meta["partitioner_tag"] == "is_forward"``,
# checkpointed ones also ``ac_graph_id`` (one per checkpoint call, a process-wide
# counter) and ``nn_module_stack`` (module paths). The min-cut partitioner copies the
# forward nodes it chooses to recompute into the backward graph with their meta, so
# a backward-graph node tagged ``is_forward`` IS a recomputed node (torch's own
# partitioner test, ``_has_tag_is_forward``); nodes created after partitioning carry
# no tag (``run_with_rng_state`` around a recomputed random op) and decide nothing.
# Inductor then fuses nodes into kernels
# and, for every kernel call it generates, calls
# ``torch._inductor.debug.set_kernel_post_grad_provenance_tracing(nodes, kernel_name)``
# (its provenance hook; a no-op unless ``trace.provenance_tracking_level`` is set) in
# the order of the generated code. We wrap that hook (and the copies cpp.py/triton.py
# imported by name) and ``compile_fx.fx_codegen_and_compile`` (to know which graph is
# being generated and whether it is a backward), classify each call from its nodes'
# tags, and name regions like eager mode: the deepest module common to all forward
# nodes of an ``ac_graph_id`` (seen when the forward graph is compiled), relative to
# the compiled root (``blocks.0``). Forward nodes the partitioner recomputes on its own
# (no ``ac_graph_id``) form the region ``(partitioner)``.
# The trace names each compiled graph call ``## Call CompiledFxGraph <key> ##`` with
# its FX graph cache key; we learn the key once the graph is built
# (``_fx_graph_cache_key``, set just after ``fx_codegen_and_compile`` returns) and key
# the record by it. A graph loaded from torch's compile cache (FX or AOTAutograd cache,
# both through ``FxGraphCache.load_with_key``) is never generated again, so the record
# is also kept in ``<inductor cache dir>/ckprof/<key>.json`` and read back on a hit;
# without it the key is listed under ``unknown`` and the analysis says recompute in
# that graph cannot be separated.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import weakref
from collections import Counter
from typing import Any

__all__ = ["PARTITIONER_REGION", "CompileWatcher", "module_path", "optimized_module_class"]

PARTITIONER_REGION = "(partitioner)"
_ROOT_FUNCTION_REGION = "checkpoint"
_SIDECAR_VERSION = 1
_MAX_CALLS = 200_000


def optimized_module_class() -> type | None:
    """torch.compile's ``OptimizedModule`` when dynamo is loaded (never imports it)."""
    module = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(module, "OptimizedModule", None)


def compile_in_use() -> bool:
    """True when torch.compile has been imported in this process."""
    return "torch._dynamo" in sys.modules


_ROOT_RE = re.compile(r"""^[LG]\[(['"]).*?\1\]""")
_ITEM_RE = re.compile(r"""\._modules\[(['"])(.*?)\1\]|\[(['"])(.*?)\3\]|\[(\d+)\]""")


def module_path(dynamo_path: str) -> str:
    """``L['self'].blocks[0]._modules['fc1']`` -> ``blocks.0.fc1`` (root stripped)."""
    path = _ROOT_RE.sub("", str(dynamo_path).strip())
    path = _ITEM_RE.sub(lambda m: "." + (m.group(2) or m.group(4) or m.group(5) or ""), path)
    return path.strip(".")


Stack = tuple[tuple[str, str], ...]  # ((module path, class name), ...) outermost first


def _stack_paths(node: Any) -> Stack:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        path = value[0] if isinstance(value, tuple) and value else value
        cls = value[1] if isinstance(value, tuple) and len(value) > 1 else ""
        cls_name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
        p = module_path(str(path))
        if p:
            out.append((p, cls_name))
    return tuple(out)


def _common_prefix(a: Stack, b: Stack) -> Stack:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def _is_trivial(node: Any) -> bool:
    """Nodes that compute nothing (views, getitem): they never decide a class."""
    if getattr(node, "op", None) != "call_function":
        return True
    target = node.target
    if getattr(target, "is_view", False):
        return True
    return getattr(target, "__name__", "") == "getitem"


def _wrapped_op_name(extern: Any) -> str:
    """The op a higher-order op runs (``run_with_rng_state(rng, aten.sdpa, ...)``): the
    trace shows that op's event, not the wrapper's."""
    origin = getattr(extern, "origin_node", None)
    for node in [origin, *getattr(extern, "origins", ())]:
        for arg in getattr(node, "args", ()) if node is not None else ():
            schema = getattr(arg, "_schema", None)
            if schema is not None and getattr(schema, "name", ""):
                return str(schema.name)
    return ""


def _extern_trace_name(extern: Any, kernel_name: str) -> str:
    name = _extern_op_name(extern, kernel_name)
    if name.startswith("higher_order::"):
        return _wrapped_op_name(extern) or name
    return name


def _extern_op_name(extern: Any, kernel_name: str) -> str:
    op = getattr(extern, "op_overload", None)
    schema = getattr(op, "_schema", None)
    if schema is not None and getattr(schema, "name", ""):
        return str(schema.name)  # "aten::addmm" (the profiler drops the overload)
    name = str(getattr(extern, "python_kernel_name", "") or kernel_name or "")
    if name.startswith("extern_kernels."):
        return "aten::" + name[len("extern_kernels."):]
    if name.startswith("torch.ops."):
        parts = name[len("torch.ops."):].split(".")
        if len(parts) >= 2:
            return f"{parts[0]}::{parts[1]}"
    return ""


class _Frame:
    """One graph being generated: its kernel calls, in code order."""

    def __init__(self, is_backward: bool) -> None:
        self.is_backward = is_backward
        self.calls: list[tuple[str, str, Counter[Any], int]] = []
        self.stacks: dict[int, Stack] = {}
        self.graph_id: int | None = None
        self.kernel_profile = False


class CompileWatcher:
    """Records compiled-backward recompute decisions while started (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[Any, str, Any]] = []
        self._local = threading.local()
        self._region_stacks: dict[int, Stack] = {}
        self._pending: list[tuple[Any, dict[str, Any]]] = []
        self._graphs: dict[str, dict[str, Any]] = {}
        self._unknown: dict[str, None] = {}
        self._keyless = 0
        self.errors: list[str] = []
        self.watching = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start watching. Never imports torch.compile's machinery: when it is not
        loaded yet, ``torch.compile`` is wrapped to start watching at its first call
        (compiling itself happens later, at the compiled model's first call)."""
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            if compile_in_use():
                self._watch()
            else:
                self._wait_for_compile()

    def stop(self) -> None:
        with self._lock:
            self._depth = max(0, self._depth - 1)
            if self._depth == 0:
                self._restore()
                self.watching = False

    def _watch(self) -> None:
        try:
            self._patch()
            self.watching = True
        except Exception as err:  # an inductor without these hooks: say so
            self._restore()
            self._note(f"torch.compile not watched ({type(err).__name__}: {err})")

    def _wait_for_compile(self) -> None:
        import torch

        watcher = self
        original = torch.compile

        def compile(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            with watcher._lock:
                if not watcher.watching and watcher._depth > 0 and compile_in_use():
                    watcher._watch()
            return out

        compile.__wrapped__ = original  # type: ignore[attr-defined]
        compile.__doc__ = original.__doc__
        compile.__name__ = original.__name__
        self._saved.append((torch, "compile", original))
        torch.compile = compile  # type: ignore[assignment]

    def _patch(self) -> None:
        import torch._inductor.codecache as codecache
        import torch._inductor.compile_fx as compile_fx
        import torch._inductor.debug as debug

        def swap(owner: Any, attr: str, value: Any) -> None:
            self._saved.append((owner, attr, owner.__dict__[attr] if isinstance(owner, type)
                                else getattr(owner, attr)))
            setattr(owner, attr, value)

        swap(compile_fx, "fx_codegen_and_compile",
             self._wrap_codegen(compile_fx.fx_codegen_and_compile))
        original = debug.set_kernel_post_grad_provenance_tracing
        swap(debug, "set_kernel_post_grad_provenance_tracing", self._wrap_provenance(original, ""))
        for name, kind in (("torch._inductor.codegen.cpp", "cpp"),
                           ("torch._inductor.codegen.triton", "triton")):
            try:
                module = __import__(name, fromlist=["_"])
            except Exception:  # no triton: that backend cannot run here anyway
                continue
            if getattr(module, "set_kernel_post_grad_provenance_tracing", None) is original:
                swap(module, "set_kernel_post_grad_provenance_tracing",
                     self._wrap_provenance(original, kind))
        load = codecache.FxGraphCache.__dict__["load_with_key"]
        swap(codecache.FxGraphCache, "load_with_key", staticmethod(self._wrap_load(load.__func__)))

    def _restore(self) -> None:
        for owner, attr, value in reversed(self._saved):
            setattr(owner, attr, value)
        self._saved = []

    def _note(self, message: str) -> None:
        if len(self.errors) < 20 and message not in self.errors:
            self.errors.append(message)

    # -- wrappers (never let ckprof break a compile) -----------------------------------
    def _frame(self) -> _Frame | None:
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else None

    def _wrap_codegen(self, original: Any) -> Any:
        watcher = self

        def fx_codegen_and_compile(gm: Any, *args: Any, **kwargs: Any) -> Any:
            frame = _Frame(bool(kwargs.get("is_backward", False)))
            try:
                watcher._learn_regions(gm, frame)
            except Exception as err:
                watcher._note(f"region names not read: {err}")
            stack = watcher._local.__dict__.setdefault("stack", [])
            stack.append(frame)
            try:
                out = original(gm, *args, **kwargs)
            finally:
                stack.pop()
            if frame.is_backward:
                try:
                    watcher._finish(frame, out)
                except Exception as err:
                    watcher._note(f"compiled backward not recorded: {err}")
            return out

        fx_codegen_and_compile._ckprof_original = original  # type: ignore[attr-defined]
        return fx_codegen_and_compile

    def _wrap_provenance(self, original: Any, kind: str) -> Any:
        watcher = self

        def set_kernel_post_grad_provenance_tracing(node_schedule: Any, kernel_name: str,
                                                    is_extern: bool = False) -> Any:
            frame = watcher._frame()
            if frame is not None and frame.is_backward and len(frame.calls) < _MAX_CALLS:
                try:
                    watcher._add_call(frame, node_schedule, kernel_name, is_extern, kind)
                except Exception as err:
                    watcher._note(f"kernel call not recorded: {err}")
            return original(node_schedule, kernel_name, is_extern)

        set_kernel_post_grad_provenance_tracing._ckprof_original = original  # type: ignore[attr-defined]
        return set_kernel_post_grad_provenance_tracing

    def _wrap_load(self, original: Any) -> Any:
        watcher = self

        def load_with_key(key: str, *args: Any, **kwargs: Any) -> Any:
            out = original(key, *args, **kwargs)
            try:
                graph = out[0] if isinstance(out, tuple) else None
                if graph is not None and kwargs.get("is_backward", False):
                    watcher._loaded(str(key))
            except Exception as err:
                watcher._note(f"cached graph not looked up: {err}")
            return out

        load_with_key._ckprof_original = original  # type: ignore[attr-defined]
        return load_with_key

    # -- recording ----------------------------------------------------------------------
    def _learn_regions(self, gm: Any, frame: _Frame) -> None:
        """Deepest module common to the nodes of each checkpoint call (ac_graph_id)."""
        seen: dict[int, Stack] = {}
        for node in gm.graph.nodes:
            ac = node.meta.get("ac_graph_id")
            if ac is None or node.op != "call_function":
                continue
            paths = _stack_paths(node)
            seen[ac] = _common_prefix(seen[ac], paths) if ac in seen else paths
        with self._lock:
            for ac, paths in seen.items():
                if not frame.is_backward or ac not in self._region_stacks:
                    old = self._region_stacks.get(ac)
                    self._region_stacks[ac] = paths if old is None else _common_prefix(old, paths)
        frame.stacks = seen

    def _add_call(self, frame: _Frame, node_schedule: Any, kernel_name: str,
                  is_extern: bool, kind: str) -> None:
        from torch._inductor import config
        from torch._inductor.virtualized import V

        if frame.graph_id is None:
            frame.graph_id = getattr(V.graph, "graph_id", None)
            frame.kernel_profile = bool(config.cpp.enable_kernel_profile)
        if is_extern:
            origin = getattr(node_schedule, "origin_node", None)
            nodes = [origin] if origin is not None else list(getattr(node_schedule, "origins", ()))
            name, call_kind = _extern_trace_name(node_schedule, kernel_name), "extern"
        else:
            nodes = []
            for snode in node_schedule:
                ir_node = getattr(snode, "node", None)
                if ir_node is not None:
                    nodes.extend(getattr(ir_node, "origins", ()))
            call_kind = kind or "other"
            if call_kind == "cpp":
                prefix = f"graph_{frame.graph_id}_" if frame.graph_id is not None else ""
                name = prefix + str(kernel_name) if frame.kernel_profile else ""
            else:
                name = str(kernel_name or "")
        recompute: Counter[Any] = Counter()
        backward = 0
        seen: set[str] = set()
        for node in nodes:
            if node is None or node.name in seen or _is_trivial(node):
                continue
            seen.add(node.name)
            tag = node.meta.get("partitioner_tag")
            if tag == "is_forward":
                recompute[node.meta.get("ac_graph_id")] += 1
            elif tag is not None:
                backward += 1
            # untagged: made after partitioning (run_with_rng_state wrapping a
            # recomputed random op, ...): it decides nothing
        frame.calls.append((name, call_kind, recompute, backward))

    def _finish(self, frame: _Frame, compiled: Any) -> None:
        if not frame.calls:
            return
        ac_ids = sorted({ac for _, _, rc, _ in frame.calls for ac in rc if ac is not None})
        with self._lock:
            stacks = {ac: self._region_stacks.get(ac, frame.stacks.get(ac, ())) for ac in ac_ids}
        names: list[str] = []
        classes: list[str] = []
        index: dict[Any, int] = {}
        for ac in ac_ids:
            path, cls = stacks[ac][-1] if stacks[ac] else ("", "")
            index[ac] = len(names)
            names.append(path)
            classes.append(cls)
        if any(None in rc for _, _, rc, _ in frame.calls):
            index[None] = len(names)
            names.append(PARTITIONER_REGION)
            classes.append("")
        calls = []
        for name, kind, rc, bw in frame.calls:
            n_rc = sum(rc.values())
            if n_rc and bw:
                cls = "m"
            elif n_rc:
                cls = "r"
            else:
                cls = "b" if bw else "v"
            # a checkpoint region wins over the partitioner's own recompute fused in
            region = index[max(rc, key=lambda a: (a is not None, rc[a]))] if n_rc else -1
            calls.append([name, kind, cls, region, n_rc, bw])
        # "paths": module paths relative to the compiled root; "regions" (the names) are
        # made at metadata time, qualified in the model the capture saw
        record = {"source": "compiled", "graph_id": frame.graph_id,
                  "kernel_profile": frame.kernel_profile, "paths": names,
                  "classes": classes, "regions": _unique(names), "calls": calls}
        try:
            ref: Any = weakref.ref(compiled)
        except TypeError:
            ref = lambda: compiled  # noqa: E731
        with self._lock:
            self._pending.append((ref, record))

    def _loaded(self, key: str) -> None:
        with self._lock:
            if key in self._graphs:
                return
        record = _read_sidecar(key)
        with self._lock:
            if record is not None:
                self._graphs[key] = {**record, "source": "ckprof-cache"}
                self._unknown.pop(key, None)
            else:
                self._unknown[key] = None

    def _resolve(self) -> None:
        """Key the records of graphs compiled so far (the key is set once built)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for ref, record in pending:
            graph = ref()
            if graph is None:
                continue  # dropped by torch before it could run in a trace window
            key = getattr(graph, "_fx_graph_cache_key", None)
            with self._lock:
                if key is None:  # FX graph cache off: the trace prints "None"
                    self._keyless += 1
                    self._graphs[f"nokey-{self._keyless}"] = {**record, "keyless": True}
                    continue
                self._graphs[str(key)] = record
                self._unknown.pop(str(key), None)
            _write_sidecar(str(key), record, self._note)

    def metadata(self, roots: Any = ()) -> dict[str, Any]:
        """The ``compiled`` metadata object ({} when torch.compile was never watched).

        ``roots``: the model(s) the capture saw; region paths (relative to the compiled
        module, which may be a submodule after a graph break) are qualified in them,
        like eager region names (``model.layers.0``)."""
        if not self.watching and not self._graphs and not self._pending and not self._unknown:
            return {}
        self._resolve()
        index = _ModuleIndex(roots)
        with self._lock:
            graphs = {}
            for key, rec in self._graphs.items():
                paths = rec.get("paths")
                if isinstance(paths, list) and len(paths) == len(rec.get("classes", ())):
                    full = [index.qualify(p, c) for p, c in zip(paths, rec["classes"],
                                                                   strict=True)]
                    rec = {**rec, "regions": _unique(full)}
                graphs[key] = dict(rec)
            return {"watched": True, "graphs": graphs,
                    "unknown": list(self._unknown), "errors": list(self.errors)}


def _unique(paths: list[str]) -> list[str]:
    """Region names from module paths: a path seen again gets ``#k`` (eager rule)."""
    used: Counter[str] = Counter()
    out = []
    for path in paths:
        base = path or _ROOT_FUNCTION_REGION
        k = used[base]
        used[base] += 1
        out.append(base if k == 0 or base == PARTITIONER_REGION else f"{base}#{k}")
    return out


class _ModuleIndex:
    """Qualified names of the capture's root models, by class name."""

    def __init__(self, roots: Any) -> None:
        self._by_class: dict[str, list[str]] = {}
        try:
            for root in list(roots):
                root = getattr(root, "_orig_mod", root)  # torch.compile(module) wrapper
                for qual, module in root.named_modules():
                    if qual:
                        self._by_class.setdefault(type(module).__name__, []).append(qual)
        except Exception:  # a model mutating while we look: keep relative names
            self._by_class = {}

    def qualify(self, path: str, cls: str) -> str:
        """``layers.0`` -> ``model.layers.0`` when exactly one module of that class
        sits at a qualified name ending with the path; else the path unchanged."""
        if not path or path == PARTITIONER_REGION or not cls:
            return path
        hits = {q for q in self._by_class.get(cls, ())
                if q == path or q.endswith("." + path)}
        if path in hits:
            return path
        return hits.pop() if len(hits) == 1 else path


# ------------------------------------------------------------------------- sidecar


def sidecar_dir() -> str | None:
    """Where compile records are kept between runs: ``<inductor cache dir>/ckprof``."""
    try:
        from torch._inductor.runtime.runtime_utils import cache_dir
        return os.path.join(cache_dir(), "ckprof")
    except Exception:
        return None


def _sidecar_path(key: str) -> str | None:
    folder = sidecar_dir()
    if folder is None or not re.fullmatch(r"[A-Za-z0-9_\-]{8,200}", key):
        return None
    return os.path.join(folder, f"{key}.json")


def _read_sidecar(key: str) -> dict[str, Any] | None:
    path = _sidecar_path(key)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _SIDECAR_VERSION:
        return None
    record = data.get("record")
    return record if isinstance(record, dict) and isinstance(record.get("calls"), list) else None


def _write_sidecar(key: str, record: dict[str, Any], note: Any) -> None:
    path = _sidecar_path(key)
    if path is None or os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": _SIDECAR_VERSION, "record": record}, fh)
        os.replace(tmp, path)
    except OSError as err:
        note(f"record of compiled graph {key} not kept for later runs: {err}")
        with contextlib.suppress(OSError):
            os.unlink(tmp)
