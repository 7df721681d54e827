"""Apply a checkpointing policy to a model's repeated blocks (torch, imported on call).

Contract::

    find_blocks(model, path=None)  -> Blocks: the children of the largest nn.ModuleList
                                   (or of the container named by ``path``)
    apply_policy(model, policy, blocks=None)   context manager: checkpoint while inside

# NOTE [ How a policy is applied ]
# ``apply_policy`` wraps blocks IN PLACE and unwraps them on exit: it sets an
# instance attribute ``forward`` on each chosen block that runs the block's own
# forward through ``ckprof.checkpoint`` (non-reentrant, region named after the
# block's path, so ``ckprof::checkpoint::<region>`` / ``ckprof::recompute::<region>``
# markers are emitted). The module tree, parameter objects and ``state_dict`` keys
# never change, so an optimizer built before or after stays valid. On exit the
# attribute is removed (or the previous instance attribute put back). Nothing is
# deep-copied: the sweep builds a fresh model per run (in its own process) instead.
#
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ckprof.errors import CkprofError
from ckprof.strategy.policies import Policy, op_name

__all__ = ["Blocks", "apply_policy", "find_blocks"]

@dataclass(frozen=True)
class Blocks:
    """The repeated blocks a policy applies to: ``path`` of their container in the
    model ("" for the model itself) and ``(name, module)`` pairs in order."""

    path: str
    items: tuple[tuple[str, Any], ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items)


def find_blocks(model: Any, path: str | None = None) -> Blocks:
    """The repeated blocks of ``model``.

    With ``path`` (e.g. ``"encoder.layers"``): the children of that submodule. Without:
    the children of the largest ``nn.ModuleList`` (most children; ties go to the one
    holding more parameters, then to the first in ``named_modules`` order). Raises
    :class:`~ckprof.errors.CkprofError` when there is none.
    """
    import torch.nn as nn

    if path:
        try:
            container = model.get_submodule(path)
        except AttributeError as err:
            raise CkprofError(
                f"model has no submodule {path!r}",
                hint="Name the container of the repeated blocks, e.g. 'encoder.layers'",
            ) from err
        found = path
    else:
        best: tuple[int, int, int] | None = None
        found, container = "", None
        for order, (name, module) in enumerate(model.named_modules()):
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                n_params = sum(p.numel() for p in module.parameters())
                key = (len(module), n_params, -order)
                if best is None or key > best:
                    best, found, container = key, name, module
        if container is None:
            raise CkprofError(
                f"{type(model).__name__} has no nn.ModuleList of blocks to checkpoint",
                hint="Pass blocks='<path of the container>' (CLI: --blocks)",
            )
    children = tuple(
        (f"{found}.{name}" if found else name, child) for name, child in container.named_children()
    )
    if not children:
        raise CkprofError(f"{path or type(model).__name__}: the container has no child modules",
                          hint="Name the container of the repeated blocks")
    return Blocks(path=found, items=children)


def _region_name(name: str) -> str:
    return name.replace("::", ".") or "block"


def _context_fn(policy: Policy) -> Callable[[], Any] | None:
    """The ``context_fn`` for torch's checkpoint (``None``: plain recompute everything)."""
    if policy.kind == "selective":
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        save = frozenset(policy.save_ops)

        def save_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
            packet = op_name(getattr(op, "overloadpacket", op))
            return CheckpointPolicy.MUST_SAVE if packet in save else CheckpointPolicy.PREFER_RECOMPUTE

        return functools.partial(create_selective_checkpoint_contexts, save_matmuls)
    if policy.kind == "custom" and policy.op_policy is not None:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        return functools.partial(create_selective_checkpoint_contexts, policy.op_policy)
    return None


def _checkpointed_forward(forward: Callable[..., Any], region: str, context_fn: Callable[[], Any] | None):
    from ckprof.capture import checkpoint

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        extra: dict[str, Any] = {"name": region, "use_reentrant": False}
        if context_fn is not None:
            extra["context_fn"] = context_fn
        return checkpoint(forward, *args, **extra, **kwargs)

    return run


_MISSING = object()


@contextlib.contextmanager
def apply_policy(model: Any, policy: Policy, blocks: Blocks | str | None = None) -> Iterator[Blocks]:
    """Checkpoint ``model``'s blocks per ``policy`` while inside the ``with``.

    Yields the :class:`Blocks` found (``blocks`` may be a :class:`Blocks`, a container
    path, or ``None`` to find them). The model is restored on exit, also on error;
    see ``NOTE [ How a policy is applied ]``.
    """
    found = blocks if isinstance(blocks, Blocks) else find_blocks(model, blocks)
    chosen = policy.chosen(len(found))
    context_fn = _context_fn(policy)
    saved: list[tuple[Any, Any]] = []
    try:
        for index in chosen:
            name, block = found.items[index]
            previous = block.__dict__.get("forward", _MISSING)
            saved.append((block, previous))
            block.forward = _checkpointed_forward(block.forward, _region_name(name), context_fn)
        yield found
    finally:
        for block, previous in reversed(saved):
            if previous is _MISSING:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
