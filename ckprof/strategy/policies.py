"""Checkpointing policies: which of a model's repeated blocks to checkpoint, and how.

Contract::

    Policy                         frozen description (no torch needed to build one)
    builtin_policies(n_blocks)     none, full, every_2, sqrt (every ceil(sqrt(N))-th), selective
    parse_policy(text)             "none" | "full" | "every_<k>" | "sqrt" | "selective"
                                   | "selective:<op>,<op>" | "advised:<op>+<op>"
                                   | "advised:<trace>" | "module:function"

Applying a policy to a model is :mod:`ckprof.strategy.apply` (torch).

# "every_k" checkpoints blocks 0, k, 2k, ... (k = 1 is "full"); "sqrt" is every_k
# with k = ceil(sqrt(N)), i.e. about sqrt(N) checkpointed blocks.
# "selective" checkpoints every block through
# ``torch.utils.checkpoint.create_selective_checkpoint_contexts``: outputs of the
# ops in ``save_ops`` (matmuls, convolutions, attention) are saved, every other op
# is recomputed in backward.
# "advised" is selective with the op list ``ckprof advise`` measured from a trace
# (:mod:`ckprof.strategy.advice`); ``advised:<trace file>`` computes the advice on the
# spot and runs what it recommends: that list, or the whole-block policy (every_<k>,
# full) it found better (NOTE [ Selective checkpointing or unchecked blocks ]).

Pure: no torch. ``selective`` policies name aten ops as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

__all__ = [
    "DEFAULT_SAVE_OPS",
    "POLICY_KINDS",
    "Policy",
    "builtin_policies",
    "dedupe_policies",
    "op_name",
    "parse_policy",
    "policy_signature",
    "resolve_policies",
]

POLICY_KINDS: tuple[str, ...] = ("none", "every", "sqrt", "selective", "custom")

#: aten overload packets whose outputs "selective" saves (names without "aten.").
DEFAULT_SAVE_OPS: tuple[str, ...] = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "convolution",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


@dataclass(frozen=True)
class Policy:
    """One checkpointing policy.

    ``kind``: ``none`` (no checkpointing), ``every`` (blocks whose index is a multiple
    of ``every``; ``every=1`` is full), ``sqrt`` (``every = ceil(sqrt(N))``),
    ``selective`` (every block, saving the outputs of ``save_ops``), ``custom``
    (``select(index, n_blocks) -> bool`` picks the blocks, ``op_policy`` -- a
    ``create_selective_checkpoint_contexts`` policy function or ``None`` -- says
    what to save inside them).
    """

    name: str
    kind: str
    every: int = 1
    save_ops: tuple[str, ...] = DEFAULT_SAVE_OPS
    select: Callable[[int, int], bool] | None = field(default=None, compare=False)
    op_policy: Callable[..., Any] | None = field(default=None, compare=False)
    #: text the policy was parsed from ("module:function" for custom ones), for reruns
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy kind must be one of {POLICY_KINDS}, not {self.kind!r}")
        if self.every < 1:
            raise ValueError(f"policy {self.name!r}: every must be >= 1, not {self.every}")

    # ---- constructors ------------------------------------------------------------
    @classmethod
    def none(cls) -> Policy:
        return cls("none", "none", spec="none")

    @classmethod
    def full(cls) -> Policy:
        return cls("full", "every", every=1, spec="full")

    @classmethod
    def every_k(cls, k: int) -> Policy:
        if k == 1:
            return cls.full()
        return cls(f"every_{k}", "every", every=int(k), spec=f"every_{k}")

    @classmethod
    def sqrt(cls) -> Policy:
        return cls("sqrt", "sqrt", spec="sqrt")

    @classmethod
    def selective(cls, save_ops: Sequence[str] = DEFAULT_SAVE_OPS, name: str = "selective") -> Policy:
        ops = tuple(op_name(op) for op in save_ops)
        spec = "selective" if ops == DEFAULT_SAVE_OPS else "selective:" + ",".join(ops)
        return cls(name, "selective", save_ops=ops, spec=spec)

    @classmethod
    def advised(cls, save_ops: Sequence[str], name: str = "advised") -> Policy:
        """Every block, saving the ops :func:`ckprof.strategy.advice.advise` chose (none:
        plain full recompute). The spec ``advised:<op>+<op>`` parses back to it."""
        ops = tuple(op_name(op) for op in save_ops)
        if not _ADVISED.match(f"{name}:"):
            raise ValueError(f"an advised policy is named 'advised' or 'advised-<label>', not {name!r}")
        spec = f"{name}:" + "+".join(ops)
        if not ops:
            return cls(name, "every", every=1, spec=spec)
        return cls(name, "selective", save_ops=ops, spec=spec)

    @classmethod
    def custom(
        cls,
        name: str,
        select: Callable[[int, int], bool] | None = None,
        op_policy: Callable[..., Any] | None = None,
        spec: str = "",
    ) -> Policy:
        """A user policy: ``select(index, n_blocks)`` picks blocks (default: all),
        ``op_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy`` (optional) makes it
        selective."""
        return cls(name, "custom", select=select, op_policy=op_policy, spec=spec)

    # ---- what it does ------------------------------------------------------------
    def chosen(self, n_blocks: int) -> tuple[int, ...]:
        """Indices of the blocks this policy checkpoints, out of ``n_blocks``."""
        if self.kind == "none":
            return ()
        if self.kind == "selective":
            return tuple(range(n_blocks))
        if self.kind == "custom":
            pick = self.select or (lambda i, n: True)
            return tuple(i for i in range(n_blocks) if pick(i, n_blocks))
        k = sqrt_k(n_blocks) if self.kind == "sqrt" else self.every
        return tuple(i for i in range(n_blocks) if i % k == 0)

    def describe(self, n_blocks: int) -> str:
        chosen = self.chosen(n_blocks)
        what = f"{len(chosen)}/{n_blocks} blocks"
        if self.kind == "selective":
            return f"{what}, save matmul/attn" if self.save_ops == DEFAULT_SAVE_OPS else (
                f"{what}, save {','.join(self.save_ops[:3])}{'...' if len(self.save_ops) > 3 else ''}")
        if self.kind == "sqrt":
            return f"{what} (every {sqrt_k(n_blocks)})"
        if self.kind == "custom" and self.op_policy is not None:
            return f"{what}, custom op policy"
        return what


def sqrt_k(n_blocks: int) -> int:
    """k for the "sqrt" policy: ceil(sqrt(N)), at least 1."""
    return max(1, math.ceil(math.sqrt(max(n_blocks, 1))))


def builtin_policies(n_blocks: int | None = None) -> tuple[Policy, ...]:
    """The default sweep: none, full, every_2, sqrt, selective (sqrt dropped when it
    selects the same blocks as another every_k policy for ``n_blocks``)."""
    out = [Policy.none(), Policy.full(), Policy.every_k(2)]
    if n_blocks is None or sqrt_k(n_blocks) not in (1, 2):
        out.append(Policy.sqrt())
    out.append(Policy.selective())
    return tuple(out)


_EVERY = re.compile(r"^every[_:\-]?(\d+)$")
#: ``advised:<ops>`` or ``advised-<label>:<ops>`` (several advised policies in one sweep)
_ADVISED = re.compile(r"^(advised(?:-[A-Za-z0-9_.]+)?):(.*)$", re.DOTALL)


def parse_policy(text: str) -> Policy:
    """Parse a policy name as given on the command line.

    ``none``, ``full``, ``every_<k>`` (also ``every<k>``, ``every:<k>``), ``sqrt``,
    ``selective``, ``selective:<op>[,<op>...]`` (aten op names; ``+`` separates them
    too, handy on a command line that splits policies at commas),
    ``advised:<op>[+<op>...]`` (the list ``ckprof advise`` prints, named ``advised``;
    ``advised-<label>:...`` names it ``advised-<label>``, to compare several),
    ``advised:<trace file>`` (advise from that full-checkpointing trace now), or
    ``package.module:function`` naming a function that returns a :class:`Policy`
    (called with no arguments) -- the form that also travels to a worker process.
    """
    raw = str(text).strip()
    low = raw.lower()
    if low in ("none", "no", "off"):
        return Policy.none()
    if low in ("full", "all"):
        return Policy.full()
    if low == "sqrt":
        return Policy.sqrt()
    if low == "selective":
        return Policy.selective()
    if low.startswith("selective:"):
        ops = _op_list(raw.split(":", 1)[1])
        if not ops:
            raise ValueError(f"policy {raw!r}: name at least one op after 'selective:'")
        return Policy.selective(ops, name=raw)
    if low == "advised" or (low.startswith("advised-") and ":" not in low):
        raise ValueError("policy 'advised' needs its ops: advised:<op>+<op> (ckprof advise TRACE "
                         "prints them) or advised:<trace of the model under full checkpointing>")
    m = _ADVISED.match(raw)
    if m:
        name, rest = m.group(1), m.group(2).strip()
        if _looks_like_trace(rest):
            policy = _advised_from_trace(rest, name)
            # a whole-block recommendation named "advised" reruns from this text
            return policy if policy.kind == "selective" else _with_spec(policy, raw)
        return Policy.advised(_op_list(rest), name=name)
    m = _EVERY.match(low)
    if m:
        return Policy.every_k(int(m.group(1)))
    if ":" in raw:
        module_name, _, attr = raw.partition(":")
        try:
            factory: Any = import_module(module_name)
            for part in attr.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"policy {raw!r}: cannot import {attr!r} from {module_name!r} ({err})") from err
        if not callable(factory):
            raise ValueError(f"policy {raw!r}: {attr} is a {type(factory).__name__}, not a function")
        policy = factory()
        if not isinstance(policy, Policy):
            raise ValueError(f"policy {raw!r}: {raw} returned {type(policy).__name__}, not ckprof.strategy.policies.Policy")
        return policy if policy.spec else _with_spec(policy, raw)
    raise ValueError(
        f"unknown policy {raw!r}: use none, full, every_<k>, sqrt, selective, "
        "selective:<op>,<op>, advised:<op>+<op>, advised:<trace> or module:function"
    )


def _op_list(text: str) -> list[str]:
    return [op.strip() for op in re.split(r"[,+]", text) if op.strip()]


def _looks_like_trace(text: str) -> bool:
    low = text.lower()
    return low.endswith((".json", ".json.gz", ".sqlite")) or "/" in text or "\\" in text


def _advised_from_trace(path: str, name: str = "advised") -> Policy:
    from ckprof.analysis import load
    from ckprof.errors import CkprofError
    from ckprof.strategy.advice import advise

    try:  # what the advice recommends: its selective list, or whole blocks unchecked
        return advise(load(path)).recommended_policy(name)
    except CkprofError as err:
        raise ValueError(f"policy '{name}:{path}': {err}") from err


def _with_spec(policy: Policy, spec: str) -> Policy:
    import dataclasses

    return dataclasses.replace(policy, spec=spec)


def resolve_policies(policies: Sequence[Policy | str] | None, n_blocks: int | None = None) -> tuple[Policy, ...]:
    """Policies from objects or names; the built-in set when ``None``. Names must be unique."""
    if policies is None:
        return builtin_policies(n_blocks)
    out = tuple(p if isinstance(p, Policy) else parse_policy(p) for p in policies)
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"policy names must be unique; repeated: {', '.join(dupes)}")
    if not out:
        raise ValueError("give at least one policy")
    return out


def op_name(op: Any) -> str:
    """'aten.mm' / 'aten::mm' / torch.ops.aten.mm / 'mm' -> 'mm'."""
    text = str(getattr(op, "__name__", op) if not isinstance(op, str) else op)
    text = text.replace("::", ".")
    if text.startswith("aten."):
        text = text[5:]
    return text.split(".")[0]


def policy_signature(policy: Policy, n_blocks: int) -> tuple[Any, ...]:
    """What a policy does to ``n_blocks`` blocks, comparable across policies: two
    policies with equal signatures checkpoint exactly the same (``sqrt`` and
    ``every_2`` for 4 blocks). Custom op policies are compared by identity."""
    chosen = policy.chosen(n_blocks)
    if not chosen:
        return ("none",)
    if policy.kind == "selective":
        return ("selective", chosen, tuple(sorted(policy.save_ops)))
    if policy.kind == "custom" and policy.op_policy is not None:
        return ("custom", chosen, id(policy.op_policy))
    return ("plain", chosen)


def dedupe_policies(policies: Sequence[Policy], n_blocks: int) -> tuple[tuple[Policy, ...], dict[str, tuple[str, ...]]]:
    """The policies with duplicates removed (first of each kept) and, for each kept one,
    the names of the later policies that do exactly the same to ``n_blocks`` blocks."""
    kept: dict[tuple[Any, ...], Policy] = {}
    aliases: dict[str, list[str]] = {}
    for policy in policies:
        sig = policy_signature(policy, n_blocks)
        if sig in kept:
            aliases.setdefault(kept[sig].name, []).append(policy.name)
        else:
            kept[sig] = policy
    return tuple(kept.values()), {k: tuple(v) for k, v in aliases.items()}
